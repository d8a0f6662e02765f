"""Retries, Retry-After, rate limit and concurrency bound of three clients, against one scripted server.

    .venv/bin/python benchmarks/retries.py [--quick]

A loopback HTTP server (http.server in a thread, no network) plays an OpenAI-compatible
/v1/completions that fails as real teachers do: 429 with Retry-After (seconds, or an HTTP date),
500, 503, a reply slower than the client's timeout, a connection reset, a 400 (never worth
retrying) and a server that stays down. Each scenario runs, in the same process, against
- `baseline`: the hand-written client as it was before issue 20 (phi4ray/serve/endpoint.py at
  BASELINE_COMMIT, loaded from git): own backoff loop, Retry-After in seconds, token bucket;
- `openai-sdk`: the `openai` SDK's AsyncOpenAI(max_retries=...) (its own retries and Retry-After);
- `tenacity`: phi4ray.serve.endpoint.OpenAIEndpoint now, on phi4ray.run.retry (tenacity + aiolimiter).
Every client gets max_retries=3, a 1 s timeout and a 0.5 s first backoff capped at 8 s (the SDK's
fixed constants, so the waits compare). The server timestamps every attempt, so waits are measured
where they land, not where the client says it slept.

Then: the request rate a limiter lets through against its setting, the most requests in flight
against a concurrency bound, how spread out the first retries of many callers failing together
are (full jitter against the SDK's 0-25 % jitter), the per-call overhead of the retry machinery,
and call_all (synthesis) over the endpoint: how many HTTP requests a 400 costs.
"""
from __future__ import annotations

import argparse
import asyncio
import email.utils
import itertools
import json
import logging
import os
import socket
import statistics
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tenacity import RetryCallState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.baseline import load_baseline  # noqa: E402
from phi4ray.data.synth import llm as new_llm  # noqa: E402
from phi4ray.run.retry import rate_limiter, retrying  # noqa: E402
from phi4ray.serve import endpoint as new_endpoint  # noqa: E402

# the last commit whose phi4ray/serve/endpoint.py and phi4ray/data/synth/llm.py were the hand-written ones
BASELINE_COMMIT = "deb857f11aa593d7cb7cca1bf0007df081a027ae"
RETRIES, TIMEOUT_S, BACKOFF_S, BACKOFF_MAX_S = 3, 1.0, 0.5, 8.0
OK_BODY = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "teacher",
           "choices": [{"index": 0, "text": "ok", "finish_reason": "stop", "logprobs": None}]}


# --- the scripted server ---------------------------------------------------------------------------
def _http_date(seconds_ahead: float) -> str:
    return email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)


# scenario (a URL path segment) -> (what it shows, what attempt 1, 2, ... get: the last entry repeats)
SCENARIOS: dict[str, tuple[str, list]] = {
    "ra2": ("429 Retry-After: 2", [(429, lambda: {"Retry-After": "2"}), "ok"]),
    "radate": ("429 Retry-After: HTTP date +3 s", [(429, lambda: {"Retry-After": _http_date(3)}), "ok"]),
    "503x2": ("503, 503, ok", [(503, dict), (503, dict), "ok"]),
    "500": ("500, ok", [(500, dict), "ok"]),
    "slow": ("slow (2 s > 1 s timeout), ok", ["slow", "ok"]),
    "reset": ("connection reset, ok", ["reset", "ok"]),
    "400": ("400", [(400, dict)]),
    "down": ("503 forever", [(503, dict)]),
}


@dataclass
class Run:
    arrivals: list[float] = field(default_factory=list)
    departures: list[float] = field(default_factory=list)


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, Run] = {}
        self.inflight = self.max_inflight = 0
        self.delay_s = 0.0  # for the "ok" run kind: how long a success takes


class _Handler(BaseHTTPRequestHandler):
    state: _State
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers: the client pools connections
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: dict, headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        kind, run_id = self.path.strip("/").split("/")[:2]  # /<kind>/<run>/v1/completions
        st = self.state
        with st.lock:
            run = st.runs.setdefault(run_id, Run())
            run.arrivals.append(time.monotonic())
            n = len(run.arrivals)
            st.inflight += 1
            st.max_inflight = max(st.max_inflight, st.inflight)
        try:
            script = SCENARIOS[kind][1] if kind in SCENARIOS else ["ok"]
            step = script[min(n, len(script)) - 1]
            if step == "reset":
                # RST instead of a reply: SO_LINGER 0 then close
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
            elif step == "slow":
                time.sleep(2 * TIMEOUT_S)
                self._send(200, OK_BODY, {})
            elif step == "ok":
                if st.delay_s:
                    time.sleep(st.delay_s)
                self._send(200, OK_BODY, {})
            else:
                status, headers = step
                self._send(status, {"error": {"message": f"scripted {status}", "type": "scripted"}}, headers())
        finally:
            with st.lock:
                st.inflight -= 1
                run.departures.append(time.monotonic())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the herd opens 40 connections at once: the default backlog of 5 drops SYNs

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client dropping a kept-alive connection
            super().handle_error(request, client_address)


def start_server() -> tuple[ThreadingHTTPServer, _State]:
    _Handler.state = _State()
    srv = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, _Handler.state


# --- the three clients -----------------------------------------------------------------------------
class Client:
    """One client under test: `call()` makes one completion request; None or the error's name."""
    name: str
    rate_note = ""

    async def call(self) -> str | None:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class OurClient(Client):
    def __init__(self, name: str, module, url: str, **kw):
        self.name, self.module = name, module
        cfg = {"max_retries": RETRIES, "timeout_s": TIMEOUT_S, "backoff_s": BACKOFF_S, "backoff_max_s": BACKOFF_MAX_S,
               "max_concurrency": 64, **kw}
        self.ep = module.OpenAIEndpoint(module.EndpointConfig(url, "teacher", **cfg))

    async def call(self) -> str | None:
        try:
            await self.ep.completions("hi", max_tokens=4)
        except self.module.EndpointError as e:
            return f"EndpointError {e.status or type(e).__name__}" if e.status else "EndpointError (transport)"
        return None

    async def aclose(self) -> None:
        await self.ep.aclose()


class SdkClient(Client):
    def __init__(self, url: str, max_connections: int | None = None):
        import openai  # deferred: a dev dependency, needed only for this column

        self.name, self.openai = "openai-sdk", openai
        kw = {}
        if max_connections:  # the SDK's only concurrency bound: the HTTP pool's size
            limits = type(openai.DEFAULT_CONNECTION_LIMITS)(max_connections=max_connections,
                                                            max_keepalive_connections=max_connections)
            kw["http_client"] = openai.DefaultAsyncHttpxClient(limits=limits)
        self.client = openai.AsyncOpenAI(base_url=url, api_key="sk-bench", max_retries=RETRIES, timeout=TIMEOUT_S,
                                         **kw)

    async def call(self) -> str | None:
        try:
            await self.client.completions.create(model="teacher", prompt="hi", max_tokens=4)
        except self.openai.APIStatusError as e:
            return f"{type(e).__name__} {e.status_code}"
        except self.openai.APIError as e:
            return f"{type(e).__name__}"
        return None

    async def aclose(self) -> None:
        await self.client.close()


_run_ids = itertools.count()


def make_clients(port: int, kind: str, baseline, *, names=("baseline", "openai-sdk", "tenacity"),
                 **kw) -> list[tuple[Client, str]]:
    """(client, run id) for each column named; each client gets its own run, so its own attempt count."""
    out = []
    for name in names:
        run = f"r{next(_run_ids)}"
        url = f"http://127.0.0.1:{port}/{kind}/{run}/v1"
        if name == "openai-sdk":
            out.append((SdkClient(url, kw.get("max_concurrency")), run))
        elif name == "baseline" and baseline is not None:
            out.append((OurClient(name, baseline, url, **kw), run))
        elif name == "tenacity":
            out.append((OurClient(name, new_endpoint, url, **kw), run))
    return out


# --- measurements ----------------------------------------------------------------------------------
def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


def scenarios(port: int, state: _State, baseline, repeats: int) -> None:
    """Each scenario `repeats` times per client, the repeats at once (each on its own run)."""
    rows = []
    for kind, (label, _) in SCENARIOS.items():
        for name in ("baseline", "openai-sdk", "tenacity"):
            clients = [c for _ in range(repeats) for c in make_clients(port, kind, baseline, names=(name,))]
            if not clients:
                continue

            async def one(c: Client) -> tuple[str | None, float]:
                t0 = time.monotonic()
                try:
                    return await c.call(), time.monotonic() - t0
                finally:
                    await c.aclose()

            async def go(cs=clients):
                return await asyncio.gather(*(one(c) for c, _ in cs))
            results = asyncio.run(go())
            runs = [state.runs.get(run, Run()) for _, run in clients]
            attempts = sorted({len(r.arrivals) for r in runs})
            # wait before retry k: from the end of attempt k (the server's answer, or the client's
            # timeout when that came first) to the arrival of attempt k + 1
            waits = [[b - min(d, a + TIMEOUT_S) for a, d, b in zip(r.arrivals, r.departures, r.arrivals[1:])]
                     for r in runs]
            mean_waits = [statistics.mean(w[k] for w in waits if len(w) > k) for k in range(max(map(len, waits)))]
            honoured = "-"
            if kind.startswith("ra"):  # both ask for at least 2 s; our own first backoff is at most 0.5 s
                honoured = f"{sum(1 for w in waits if w and w[0] >= 1.9)}/{len(waits)}"
            outcomes = sorted({o or "ok" for o, _ in results})
            rows.append([label, name, "-".join(map(str, attempts)), ", ".join(f"{w:.2f}" for w in mean_waits) or "-",
                         honoured, f"{statistics.median(dt for _, dt in results):.2f}", ", ".join(outcomes)])
    table(f"Scenarios (max_retries=3, timeout 1 s, backoff 0.5 s first, 8 s cap; {repeats} calls each)",
          ["scenario", "client", "attempts", "mean wait before retry 1, 2, ... (s)", "Retry-After honoured",
           "median total s", "outcome"], rows)


def limiter_alone(make, rate: float, n: int) -> float:
    """Acquisitions a second that `make()` lets through when n tasks ask at once (no HTTP)."""
    async def go():
        lim, stamps = make(), []

        async def one():
            await lim.acquire()
            stamps.append(time.monotonic())
        await asyncio.gather(*(one() for _ in range(n)))
        return (n - 1) / (stamps[-1] - stamps[0])
    return asyncio.run(go())


def rate_limits(port: int, state: _State, baseline, n: int, repeats: int = 3) -> None:
    rows = []
    for rate in (20.0, 100.0):
        makers = {"tenacity": lambda r=rate: rate_limiter(r)}
        if baseline is not None:
            makers["baseline"] = lambda r=rate: baseline.RateLimiter(r)
        for name in ("baseline", "tenacity"):
            if name not in makers:
                continue
            alone = [limiter_alone(makers[name], rate, n) for _ in range(repeats)]
            served, window, ok = [], 0, 0
            for _ in range(repeats):
                ((client, run),) = make_clients(port, "ok", baseline, names=(name,), requests_per_s=rate)

                async def go(c=client):
                    try:
                        return await asyncio.gather(*(c.call() for _ in range(n)))
                    finally:
                        await c.aclose()
                ok += sum(o is None for o in asyncio.run(go()))
                t = state.runs[run].arrivals
                served.append((len(t) - 1) / (t[-1] - t[0]))
                window = max(window, max(sum(1 for u in t if s <= u < s + 1.0) for s in t))
            rows.append([f"{rate:g}", name, f"{ok}/{n * repeats}", f"{statistics.median(alone):.1f}",
                         f"{statistics.median(served):.1f} ({min(served):.1f}-{max(served):.1f})", window])
    table(f"Rate limit ({n} requests at once, burst 1; medians of {repeats} runs)",
          ["configured req/s", "client", "ok", "limiter alone req/s", "at the server req/s (min-max)",
           "most in any 1 s"], rows)
    print("\nopenai-sdk: no request-rate limit of its own (it retries the server's 429s instead).")


def concurrency(port: int, state: _State, baseline, n: int, bound: int = 4, delay_s: float = 0.05) -> None:
    rows = []
    state.delay_s = delay_s
    try:
        for client, _ in make_clients(port, "ok", baseline, max_concurrency=bound):
            state.max_inflight = 0

            async def go(c=client):
                t0 = time.monotonic()
                try:
                    outs = await asyncio.gather(*(c.call() for _ in range(n)))
                    return outs, time.monotonic() - t0
                finally:
                    await c.aclose()
            outs, dt = asyncio.run(go())
            how = "pool max_connections" if client.name == "openai-sdk" else "semaphore"
            rows.append([client.name, how, bound, state.max_inflight, sum(o is None for o in outs), f"{dt:.2f}",
                         f"{n / bound * delay_s:.2f}"])
    finally:
        state.delay_s = 0.0
    table(f"Concurrency bound ({n} requests at once, each served in {delay_s * 1000:.0f} ms)",
          ["client", "bounded by", "bound", "most in flight (server)", "ok", "total s", "ideal s"], rows)


def herd(port: int, state: _State, baseline, n: int) -> None:
    """n callers whose first attempt all get 503 together: when do their retries land?"""
    rows = []
    for name in ("baseline", "openai-sdk", "tenacity"):
        clients = [c for _ in range(n) for c in make_clients(port, "500", baseline, names=(name,))]
        if not clients:
            continue

        async def go(cs=clients):
            try:
                return await asyncio.gather(*(c.call() for c, _ in cs))
            finally:
                await asyncio.gather(*(c.aclose() for c, _ in cs))
        asyncio.run(go())
        runs = [state.runs[run] for _, run in clients if len(state.runs.get(run, Run()).arrivals) > 1]
        gaps = sorted(r.arrivals[1] - r.departures[0] for r in runs)
        retry_at = sorted(r.arrivals[1] for r in runs)
        peak = max(sum(1 for u in retry_at if s <= u < s + 0.05) for s in retry_at)
        q = statistics.quantiles(gaps, n=10)
        drawn = first_waits_drawn(name, clients[0][0], 10_000)
        d10, *_, d90 = statistics.quantiles(drawn, n=10)
        rows.append([name, f"{len(runs)}/{n}", f"{statistics.mean(gaps):.3f}", f"{q[0]:.3f}-{q[-1]:.3f}",
                     f"{statistics.pstdev(gaps) / statistics.mean(gaps):.2f}", peak,
                     f"{d10:.3f}-{d90:.3f}", f"{statistics.pstdev(drawn) / statistics.mean(drawn):.2f}"])
    table(f"Retry spread ({n} callers, first attempt 500 at the same moment, first backoff 0.5 s)",
          ["client", "callers retried", "mean first wait at server s", "p10-p90 s", "coefficient of variation",
           "most retries in 50 ms", "policy's own first wait p10-p90 s (10k draws)", "its coefficient of variation"],
          rows)


def first_waits_drawn(name: str, client: Client, n: int) -> list[float]:
    """The first backoff each policy picks, drawn n times without any I/O: what a loaded machine's
    scheduling delays add at the server is left out."""
    if name == "openai-sdk":
        from openai._models import FinalRequestOptions  # deferred: the SDK is a dev dependency

        opts = FinalRequestOptions.construct(method="post", url="/completions")
        sdk = client.client  # type: ignore[attr-defined]
        return [sdk._calculate_retry_timeout(RETRIES, opts, None) for _ in range(n)]
    if name == "baseline":
        return [client.ep._backoff(0) for _ in range(n)]  # type: ignore[attr-defined]
    policy = retrying(retries=RETRIES, backoff_s=BACKOFF_S, backoff_max_s=BACKOFF_MAX_S, retry=bool)
    state = RetryCallState(policy, fn=None, args=(), kwargs={})
    state.attempt_number = 1
    return [policy.wait(state) for _ in range(n)]


def policy_cost_ms(n: int) -> float:
    """What phi4ray.run.retry.retrying adds to a call that succeeds at once: a no-op under the policy."""
    async def noop() -> None:
        pass

    async def go() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            await retrying(retries=RETRIES, backoff_s=BACKOFF_S, backoff_max_s=BACKOFF_MAX_S, retry=bool)(noop)
        return 1000 * (time.perf_counter() - t0) / n
    return asyncio.run(go())


def overhead(port: int, state: _State, baseline, n: int, rounds: int = 5, show: bool = True) -> None:
    """Sequential successful calls, the clients taking turns round by round (so load spikes hit all)."""
    clients = make_clients(port, "ok", baseline)
    per_call: dict[str, list[float]] = {c.name: [] for c, _ in clients}

    async def go():
        try:
            for c, _ in clients:
                await c.call()  # connect once, outside the timing
            for _ in range(rounds):
                for c, _ in clients:
                    t0 = time.perf_counter()
                    for _ in range(n // rounds):
                        await c.call()
                    per_call[c.name].append(1000 * (time.perf_counter() - t0) / (n // rounds))
        finally:
            for c, _ in clients:
                await c.aclose()
    asyncio.run(go())
    if not show:
        return
    rows = [[name, n, f"{statistics.median(ms):.2f}", f"{min(ms):.2f}"] for name, ms in per_call.items()]
    rows.append(["tenacity policy alone (no I/O)", n, f"{policy_cost_ms(n):.3f}", "-"])
    table(f"Per-call cost of a successful request (sequential, loopback, {rounds} interleaved rounds)",
          ["client", "requests", "median ms per call", "best round ms per call"], rows)


def synthesis(port: int, state: _State, baseline) -> None:
    """call_all(retries=2) over the endpoint (max_retries=3): HTTP requests one failing prompt costs."""
    rows = []
    stacks = [("tenacity", new_endpoint, new_llm)]
    old_llm = load_baseline(BASELINE_COMMIT, "phi4ray/data/synth/llm.py")
    if baseline is not None and old_llm is not None:
        stacks.insert(0, ("baseline", baseline, old_llm))
    for name, ep_mod, llm in stacks:
        for kind in ("400", "down"):
            run = f"r{next(_run_ids)}"
            cfg = ep_mod.EndpointConfig(f"http://127.0.0.1:{port}/{kind}/{run}/v1", "teacher", max_retries=RETRIES,
                                        backoff_s=0.01, backoff_max_s=0.05, timeout_s=TIMEOUT_S)

            async def go(cfg=cfg, ep_mod=ep_mod, llm=llm):
                async with ep_mod.OpenAIEndpoint(cfg) as ep:
                    return await llm.call_all(llm.EndpointEngine(ep, mode="completions"), [llm.Request("p")],
                                              retries=2, backoff_s=0.01, backoff_max_s=0.05)
            (out,) = asyncio.run(go())
            rows.append([name, SCENARIOS[kind][0], len(state.runs[run].arrivals), out.attempts, out.error[:40]])
    table("Synthesis: call_all(retries=2) over OpenAIEndpoint(max_retries=3), one prompt",
          ["stack", "server answers", "HTTP requests", "call_all attempts", "reason"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests in the rate, herd and overhead runs")
    args = ap.parse_args()
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        os.environ.pop(var, None)  # loopback only
    logging.basicConfig(level=logging.ERROR)
    baseline = load_baseline(BASELINE_COMMIT, "phi4ray/serve/endpoint.py")
    if baseline is None:
        print(f"(no git history with {BASELINE_COMMIT[:8]}: the baseline column is left out)")
    srv, state = start_server()
    try:
        overhead(srv.server_port, state, baseline, n=50, rounds=1, show=False)  # warm-up: imports, first connections
        scenarios(srv.server_port, state, baseline, repeats=3 if args.quick else 5)
        rate_limits(srv.server_port, state, baseline, n=30 if args.quick else 60)
        concurrency(srv.server_port, state, baseline, n=32)
        herd(srv.server_port, state, baseline, n=20 if args.quick else 40)
        overhead(srv.server_port, state, baseline, n=200 if args.quick else 600, rounds=20)
        synthesis(srv.server_port, state, baseline)
    finally:
        srv.shutdown()
        srv.server_close()


if __name__ == "__main__":
    main()
