"""OpenAIEndpoint against a real HTTP server on loopback, scripted per scenario.

The scenario is the first path segment of the base URL (`http://127.0.0.1:PORT/<scenario>/v1`),
so one server plays a healthy teacher, a flaky one, an overloaded one and a broken request.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from phi4ray.run.retry import rate_limiter, retry_after_s
from phi4ray.serve.endpoint import EndpointConfig, EndpointError, OpenAIEndpoint
from phi4ray.serve.sampling import SampleRequest

KEY = "sk-test-5ecret-key"


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.auth: list[str | None] = []
        self.inflight = self.max_inflight = 0


class _Handler(BaseHTTPRequestHandler):
    state: _State

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def _handle(self, body: dict | None) -> None:
        scenario, _, rest = self.path.lstrip("/").partition("/")
        st = self.state
        with st.lock:
            st.calls[scenario] += 1
            n = st.calls[scenario]
            st.auth.append(self.headers.get("Authorization"))
            st.inflight += 1
            st.max_inflight = max(st.max_inflight, st.inflight)
        try:
            ok = {"path": "/" + rest, "echo": body, "data": [{"id": "teacher"}]}
            if scenario == "flaky" and n <= 2:
                self._send(500, {"error": {"message": "engine restarting"}})
            elif scenario.startswith("busy-") and n == 1:
                self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": scenario[5:]})
            elif scenario == "busydate" and n == 1:  # Retry-After as an HTTP date, 2 s ahead
                self._send(503, {"error": {"message": "restarting"}},
                           {"Retry-After": email.utils.formatdate(time.time() + 2, usegmt=True)})
            elif scenario == "bad":
                self._send(400, {"error": {"message": "max_tokens must be positive",
                                           "type": "invalid_request_error"}})
            elif scenario == "slow":
                time.sleep(1.0)
                self._send(200, ok)
            elif scenario == "wide":
                time.sleep(0.1)
                self._send(200, ok)
            else:
                self._send(200, ok)
        finally:
            with st.lock:
                st.inflight -= 1

    def do_GET(self) -> None:
        self._handle(None)

    def do_POST(self) -> None:
        self._handle(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def state(server, monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _Handler.state = _State()
    return _Handler.state


@pytest.fixture
def cfg(server):
    """Config for a scenario on the test server; fast retries unless a test says otherwise."""
    def make(scenario: str, **kw) -> EndpointConfig:
        kw = {"max_retries": 3, "backoff_s": 0.01, "backoff_max_s": 0.05, **kw}
        return EndpointConfig(f"http://127.0.0.1:{server.server_port}/{scenario}/v1", "teacher", **kw)
    return make


def _run(config: EndpointConfig, fn):
    """Run `fn(endpoint)` on a fresh endpoint; return (result or error, endpoint, seconds)."""
    async def go():
        async with OpenAIEndpoint(config) as ep:
            t0 = time.monotonic()
            try:
                out = await fn(ep)
            except EndpointError as e:
                out = e
            return out, ep, time.monotonic() - t0
    return asyncio.run(go())


def _complete(ep: OpenAIEndpoint, **kw):
    return ep.completions("hi", max_tokens=4, **kw)


def test_retries_server_errors_then_succeeds(state, cfg, monkeypatch):
    ceilings = []
    monkeypatch.setattr(random, "uniform", lambda a, b: ceilings.append(b) or 0.0)
    out, ep, _ = _run(cfg("flaky", backoff_s=0.01, backoff_max_s=0.015), _complete)
    assert out["path"] == "/v1/completions"
    assert state.calls["flaky"] == 3
    assert ep.stats == {"requests": 3, "retries": 2, "failures": 0}
    assert ceilings == [0.01, 0.015]  # exponential, capped


@pytest.mark.parametrize("retry_after", ["0", "0.3"])
def test_429_honours_retry_after(state, cfg, monkeypatch, retry_after):
    # our own backoff would wait 5 s: finishing fast proves the server's value was used
    monkeypatch.setattr(random, "uniform", lambda a, b: b)
    out, ep, dt = _run(cfg(f"busy-{retry_after}", backoff_s=5, backoff_max_s=5), _complete)
    assert out["echo"]["prompt"] == "hi"
    assert ep.stats["retries"] == 1
    assert float(retry_after) <= dt < float(retry_after) + 2


def test_retry_after_as_an_http_date_is_honoured(state, cfg, monkeypatch):
    monkeypatch.setattr(random, "uniform", lambda a, b: b)  # our own backoff: 5 s
    out, ep, dt = _run(cfg("busydate", backoff_s=5, backoff_max_s=5), _complete)
    assert out["echo"]["prompt"] == "hi" and ep.stats["retries"] == 1
    assert 0.9 <= dt < 3  # the date has whole seconds: 1-2 s ahead when it arrives


def test_retry_after_header_parsing():
    assert retry_after_s({"retry-after": "1.5"}) == 1.5
    assert retry_after_s({"retry-after": "-3"}) == 0.0
    assert 3 <= retry_after_s({"retry-after": email.utils.formatdate(time.time() + 5, usegmt=True)}) <= 5
    assert retry_after_s({"retry-after": email.utils.formatdate(time.time() - 60, usegmt=True)}) == 0.0
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({"retry-after": "inf"}) is None  # never an endless wait
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "1"}) == 0.25  # OpenAI's finer header first
    assert retry_after_s({}) is None


def test_client_error_is_not_retried(state, cfg):
    err, ep, _ = _run(cfg("bad"), _complete)
    assert isinstance(err, EndpointError)
    assert state.calls["bad"] == 1
    assert (err.status, err.retryable) == (400, False)
    assert "400" in str(err) and "max_tokens must be positive" in str(err)
    assert "/bad/v1/completions" in str(err)
    assert ep.stats == {"requests": 1, "retries": 0, "failures": 1}


def test_timeout_retried_then_raises(state, cfg):
    err, ep, _ = _run(cfg("slow", timeout_s=0.15, max_retries=2), _complete)
    assert isinstance(err, EndpointError)
    assert (err.status, err.retryable) == (None, True)
    assert "Timeout" in str(err)
    deadline = time.monotonic() + 5  # the client gave up on the last one: the server may not have counted it yet
    while state.calls["slow"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state.calls["slow"] == 3
    assert ep.stats == {"requests": 3, "retries": 2, "failures": 1}


def test_connect_error_is_retryable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    config = EndpointConfig(f"http://127.0.0.1:{port}/v1", "teacher", max_retries=1, backoff_s=0.01)
    err, ep, _ = _run(config, _complete)
    assert isinstance(err, EndpointError) and err.retryable and err.status is None
    assert ep.stats == {"requests": 2, "retries": 1, "failures": 1}


def test_rate_limit_spaces_requests(state, cfg):
    async def ten(ep):
        return await asyncio.gather(*[_complete(ep) for _ in range(10)])
    out, _, dt = _run(cfg("ok", requests_per_s=20), ten)
    assert len(out) == 10
    assert dt >= 0.4  # 1 at once, then 9 spaced 1/20 s apart


def test_rate_limiter_allows_bursts_then_holds_the_rate():
    async def go():
        lim = rate_limiter(rate=10.0, burst=5)
        t0 = time.monotonic()
        stamps = []
        for _ in range(8):
            await lim.acquire()
            stamps.append(time.monotonic() - t0)
        return stamps
    stamps = asyncio.run(go())
    assert stamps[4] < 0.05  # the burst passes at once
    assert 0.25 <= stamps[7] < 0.6  # then one every 1/10 s
    with pytest.raises(ValueError):
        rate_limiter(rate=0)


def test_concurrency_is_bounded(state, cfg):
    async def many(ep):
        return await asyncio.gather(*[_complete(ep) for _ in range(12)])
    out, _, _ = _run(cfg("wide", max_concurrency=3), many)
    assert len(out) == 12
    assert 2 <= state.max_inflight <= 3  # concurrent, but never past the bound


def test_api_key_sent_but_never_shown(state, cfg, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TEACHER_KEY", KEY)
    out, ep, _ = _run(cfg("flaky", api_key_env="TEACHER_KEY"), _complete)
    assert state.auth == [f"Bearer {KEY}"] * 3
    err, _, _ = _run(cfg("bad", api_key_env="TEACHER_KEY"), _complete)
    assert isinstance(err, EndpointError)
    assert "retry" in caplog.text  # the retries were logged, without the key
    for shown in (repr(ep.config), repr(ep), str(err), repr(err), caplog.text):
        assert KEY not in shown


def test_no_authorization_header_without_key(state, cfg):
    _run(cfg("ok"), _complete)
    assert state.auth == [None]


def test_token_ids_and_options_sent_unchanged(state, cfg):
    ids = [100257, 0, 42, 100351]
    out, _, _ = _run(cfg("ok"), lambda ep: ep.completions(
        ids, max_tokens=8, temperature=0.0, logprobs=2, seed=7, extra={"top_k": 5}))
    body = out["echo"]
    assert body["prompt"] == ids
    assert body["model"] == "teacher"
    assert (body["logprobs"], body["seed"], body["top_k"], body["temperature"]) == (2, 7, 5, 0.0)
    assert "stop" not in body  # unset options are left to the server's defaults


def test_chat_and_models(state, cfg):
    msgs = [{"role": "user", "content": "2+2?"}]
    out, _, _ = _run(cfg("ok"), lambda ep: ep.chat(msgs, max_tokens=4, seed=1))
    assert out["path"] == "/v1/chat/completions"
    assert (out["echo"]["messages"], out["echo"]["seed"]) == (msgs, 1)
    names, _, _ = _run(cfg("ok"), lambda ep: ep.models())
    assert names == ["teacher"]


@pytest.mark.parametrize("field,value", [
    ("base_url", "127.0.0.1:8000/v1"), ("model", ""), ("api_key_env", ""), ("timeout_s", 0),
    ("max_retries", -1), ("backoff_s", -0.1), ("backoff_max_s", 0.1), ("requests_per_s", 0),
    ("max_concurrency", 0),
])
def test_config_validation_names_field(field, value):
    kw = {"base_url": "http://127.0.0.1:8000/v1", "model": "teacher", field: value}
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        EndpointConfig(**kw)


# --- the fleet client: the same policy over Ray Serve's errors -----------------------------------------
class _FakeHandle:
    """Stands in for a Serve deployment handle: `.sample.remote(payload)` raises the scripted errors
    in turn, then answers."""

    def __init__(self, errors: list[BaseException]):
        self.errors, self.calls, self.sample = list(errors), 0, self

    async def remote(self, payload: dict) -> list[dict]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return [{"token_ids": payload["prompt_ids"], "logprobs": [0.0], "finish_reason": "stop"}]


def test_fleet_sampler_retries_lost_replicas_only(monkeypatch):
    from ray.exceptions import ActorDiedError  # deferred: Ray loads only for the fleet-client tests
    from ray.serve.exceptions import BackPressureError

    from actors.serve.sampler_client import FleetSampler  # deferred too: it imports Ray Serve

    def fleet(errors, **kw):
        s = FleetSampler("sampler", backoff_s=0.01, backoff_max_s=0.02, **kw)
        s._handle = _FakeHandle(errors)
        return s

    req = SampleRequest(prompt_ids=[5, 6])
    s = fleet([ActorDiedError(), BackPressureError(1, 1)])
    assert [x.token_ids for x in s.sample_sync(req)] == [[5, 6]]
    assert (s._handle.calls, s.retries) == (3, 2)
    s = fleet([ValueError("bad request")])  # not a lost replica: fails at once
    with pytest.raises(ValueError, match="bad request"):
        s.sample_sync(req)
    assert (s._handle.calls, s.retries) == (1, 0)
    s = fleet([ActorDiedError()] * 5, max_retries=2)  # gives up with the replica's own error
    with pytest.raises(ActorDiedError):
        s.sample_sync(req)
    assert (s._handle.calls, s.retries) == (3, 2)
    # Serve's backpressure may say when to come back: that wait replaces our 5 s backoff
    monkeypatch.setattr(random, "uniform", lambda a, b: b)
    s = FleetSampler("sampler", backoff_s=5, backoff_max_s=5)
    s._handle = _FakeHandle([BackPressureError(1, 1, retry_after_s=0.2)])
    t0 = time.monotonic()
    s.sample_sync(req)
    assert 0.2 <= time.monotonic() - t0 < 2
