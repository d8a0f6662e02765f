"""The LLM call layer of synthesis: the engine interface, two engines, and `call_all`.

Steps never talk to a model directly. They build `Request`s and hand them to `call_all`, which
batches prompts into `Engine.generate` calls, bounds how many calls are in flight, retries failed
calls with jittered backoff and returns exactly one `Outcome` per request, in order: the texts, or
the reason it failed. It never raises for a bad request, so a step can always turn every seed into
a row (a failure is a row with its reason, never a lost seed).

Engines (anything with this `generate`):
- `EndpointEngine`: an external OpenAI-compatible endpoint (`phi4ray.serve.endpoint.OpenAIEndpoint`),
  chat or completions mode;
- the Ray sampler fleet (actors/serve/fleet_engine.py renders the chat template to token ids);
- `ScriptedEngine`: a function prompt -> replies, for tests.
An engine fails a whole call by raising. It may instead put an Exception in place of one prompt's
replies to fail that prompt alone, so one bad prompt does not cost its batch-mates a retry.

Retry policy (phi4ray.run.retry's, full-jitter backoff): a batch is tried once as a whole; when it
fails, each of its requests is retried alone (up to `retries` more attempts each), so one poisonous
prompt (too long, rejected by the server) fails only itself. Every request is attempted at most
1 + retries times; a request whose own error says it is final (`retryable` False, as an endpoint's
400 does) is not tried again.

Also here: the row plumbing every step shares (`make_row`, `seed_value`, `require`).
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import pyarrow as pa

from phi4ray.run.errors import ConfigError
from phi4ray.run.retry import retrying
from phi4ray.serve.guide import endpoint_body


class Engine(Protocol):
    async def generate(self, prompts: list[str], *, n: int, max_tokens: int,
                       temperature: float, guide: dict | None = None) -> list[list[str]]:
        """n completions for each prompt, in prompt order; `guide` (phi4ray.serve.guide), when
        call_all passes one, constrains their form. An engine without structured output may omit
        the parameter: call_all passes it only for guided requests."""
        ...


def require(owner: str, obj: object, checks: dict[str, tuple[bool, str]]) -> None:
    """ConfigError naming the first failing field: checks maps field -> (ok, what it must be)."""
    for name, (ok, must) in checks.items():
        if not ok:
            raise ConfigError(f"{owner}.{name} must be {must}, got {getattr(obj, name)!r}")


@dataclass(frozen=True)
class CallConfig:
    """How `call_all` talks to an engine."""
    concurrency: int = 8       # engine.generate calls in flight at once
    retries: int = 2           # extra attempts per request after its first
    batch_size: int = 16       # prompts per generate call
    backoff_s: float = 0.5     # first retry waits up to this, doubling each attempt (full jitter)
    backoff_max_s: float = 20.0
    timeout_s: float | None = None  # per generate call; None: the engine's own timeouts rule
    # send each template's output form as a guide (structured output): a small model's answer then
    # always parses. False sends prompts alone (how often the form is met unguided, or an endpoint
    # that takes no regex guide: OpenAI's API takes JSON schemas only)
    structured: bool = True

    def __post_init__(self) -> None:
        require("CallConfig", self, {
            "concurrency": (self.concurrency >= 1, ">= 1"),
            "retries": (self.retries >= 0, ">= 0"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "backoff_s": (self.backoff_s >= 0, ">= 0"),
            "backoff_max_s": (self.backoff_max_s >= self.backoff_s, ">= backoff_s"),
            "timeout_s": (self.timeout_s is None or self.timeout_s > 0, "None or > 0"),
            "structured": (isinstance(self.structured, bool), "true or false"),
        })

    def kwargs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one kind of call (a step may use several: generate, critique)."""
    max_tokens: int = 1024
    temperature: float = 0.7

    def __post_init__(self) -> None:
        require("Sampling", self, {"max_tokens": (self.max_tokens >= 1, ">= 1"),
                                   "temperature": (0 <= self.temperature <= 2, "in [0, 2]")})


@dataclass(frozen=True)
class Request:
    prompt: str
    n: int = 1
    max_tokens: int = 1024
    temperature: float = 0.7
    guide: dict | None = None  # the answer's form (phi4ray.serve.guide), e.g. a template's `output`

    @classmethod
    def of(cls, prompt: str, sampling: Sampling, n: int = 1, guide: dict | None = None) -> Request:
        return cls(prompt, n, sampling.max_tokens, sampling.temperature, guide)


@dataclass(frozen=True)
class Outcome:
    texts: tuple[str, ...] | None  # n completions, or None when the request failed
    error: str | None = None       # why it failed, set exactly when texts is None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.texts is not None

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""


def _reason(err: BaseException) -> str:
    msg = " ".join(str(err).split())[:300]
    return f"llm_error: {type(err).__name__}" + (f": {msg}" if msg else "")


class _Failed(Exception):
    """A request's failure as call_all's retry loop carries it: the engine's error, whatever it is,
    stays a value (an engine may put any exception in a prompt's slot), apart from the loop's own
    cancellation."""

    def __init__(self, error: BaseException):
        super().__init__(error)
        self.error = error


def _checked(replies: Any, count: int, n: int) -> list[list[str] | BaseException]:
    """The engine's replies if they have the promised shape, else ValueError (a whole-call failure)."""
    if not isinstance(replies, (list, tuple)) or len(replies) != count:
        got = len(replies) if isinstance(replies, (list, tuple)) else type(replies).__name__
        raise ValueError(f"engine returned {got} replies for {count} prompts")
    out: list[list[str] | BaseException] = []
    for r in replies:
        if isinstance(r, BaseException):
            out.append(r)
        elif isinstance(r, (list, tuple)) and len(r) == n and all(isinstance(t, str) for t in r):
            out.append(list(r))
        else:
            out.append(ValueError(f"expected {n} strings for a prompt, got {str(r)[:80]!r}"))
    return out


async def call_all(engine: Engine, requests: Sequence[Request], *, concurrency: int = 8, retries: int = 2,
                   batch_size: int = 16, backoff_s: float = 0.5, backoff_max_s: float = 20.0,
                   timeout_s: float | None = None, structured: bool = True) -> list[Outcome]:
    """One Outcome per request, in order; never raises for a failing request (see the module doc).
    `structured=False` drops the requests' guides."""
    CallConfig(concurrency, retries, batch_size, backoff_s, backoff_max_s, timeout_s, structured)  # validates
    sem = asyncio.Semaphore(concurrency)
    outcomes: list[Outcome | None] = [None] * len(requests)

    async def attempt(idx: list[int]) -> tuple[list[list[str] | BaseException], bool]:
        """Each request's replies or error, and whether the call failed as a whole."""
        first = requests[idx[0]]
        async with sem:
            try:
                guided = {"guide": first.guide} if structured and first.guide is not None else {}
                coro = engine.generate([requests[i].prompt for i in idx], n=first.n,
                                       max_tokens=first.max_tokens, temperature=first.temperature, **guided)
                replies = await (asyncio.wait_for(coro, timeout_s) if timeout_s else coro)
                return _checked(replies, len(idx), first.n), False
            except asyncio.CancelledError:
                raise
            except Exception as e:  # anything an engine raises fails this call, not the step
                return [e] * len(idx), True

    async def alone(i: int, first: BaseException, shared: bool) -> None:
        """Retry request i by itself; `first` was its batch's failure (`shared`: the whole batch's,
        so possibly a batch-mate's doing and never final for this request)."""
        tries = 0

        async def once() -> list[str]:
            nonlocal tries
            tries += 1
            result = first if tries == 1 else (await attempt([i]))[0][0]
            if isinstance(result, BaseException):
                raise _Failed(result)
            return result

        def retryable(e: BaseException) -> bool:
            return isinstance(e, _Failed) and ((shared and e.error is first)
                                               or getattr(e.error, "retryable", True) is not False)

        policy = retrying(retries=retries, backoff_s=backoff_s, backoff_max_s=backoff_max_s, retry=retryable)
        try:
            outcomes[i] = Outcome(tuple(await policy(once)), None, tries)
        except _Failed as e:
            outcomes[i] = Outcome(None, _reason(e.error), tries)

    async def batch(idx: list[int]) -> None:
        results, whole = await attempt(idx)
        failed = []
        for i, r in zip(idx, results):
            if isinstance(r, BaseException):
                failed.append(alone(i, r, whole and len(idx) > 1))
            else:
                outcomes[i] = Outcome(tuple(r), None, 1)
        await asyncio.gather(*failed)

    # a generate call takes one (n, max_tokens, temperature, guide): group by it, keeping request order
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        if not isinstance(r, Request):
            outcomes[i] = Outcome(None, f"bad_request: {type(r).__name__} is not a Request")
            continue
        guide = json.dumps(r.guide, sort_keys=True) if structured and r.guide is not None else None
        groups.setdefault((r.n, r.max_tokens, r.temperature, guide), []).append(i)
    batches = [idx[s:s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)]
    await asyncio.gather(*(batch(b) for b in batches))
    return outcomes  # type: ignore[return-value]  # every slot is filled above


# --- engines --------------------------------------------------------------------------------------
class ScriptedEngine:
    """A test engine: `reply(prompt)` gives the completions (a str is repeated n times, a list must
    hold n). `fail(prompt, attempt)` (attempt: how many earlier calls held this prompt) makes the
    whole call raise, as a real engine does. Records calls and the most calls ever in flight."""

    def __init__(self, reply: Callable[[str], str | list[str]],
                 fail: Callable[[str, int], bool] | None = None, delay_s: float = 0.0):
        self.reply, self.fail, self.delay_s = reply, fail, delay_s
        self.calls: list[list[str]] = []
        self.guides: list[dict | None] = []  # each call's guide
        self.seen: dict[str, int] = {}
        self.in_flight = self.max_in_flight = 0

    async def generate(self, prompts: list[str], *, n: int, max_tokens: int,
                       temperature: float, guide: dict | None = None) -> list[list[str]]:
        self.calls.append(list(prompts))
        self.guides.append(guide)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            attempts = [self.seen.get(p, 0) for p in prompts]
            for p in prompts:
                self.seen[p] = self.seen.get(p, 0) + 1
            for p, a in zip(prompts, attempts):
                if self.fail is not None and self.fail(p, a):
                    raise RuntimeError(f"scripted failure (attempt {a})")
            out = []
            for p in prompts:
                r = self.reply(p)
                out.append([r] * n if isinstance(r, str) else list(r))
            return out
        finally:
            self.in_flight -= 1


class EndpointEngine:
    """An external OpenAI-compatible endpoint as an Engine. One request per prompt (chat takes one
    conversation; completions are sent singly too, so a failing prompt fails alone: its slot holds
    the exception). The endpoint bounds concurrency and rate and retries transient HTTP errors
    itself, so give call_all few retries on top (each call_all retry re-runs the endpoint's)."""

    def __init__(self, endpoint, *, mode: str = "chat", system: str | None = None,
                 extra: dict[str, Any] | None = None):
        if mode not in ("chat", "completions"):
            raise ConfigError(f"EndpointEngine.mode must be 'chat' or 'completions', got {mode!r}")
        self.endpoint, self.mode, self.system, self.extra = endpoint, mode, system, extra

    async def _one(self, prompt: str, n: int, max_tokens: int, temperature: float, guide: dict | None) -> list[str]:
        extra = {**(self.extra or {}), **endpoint_body(guide)}
        if self.mode == "chat":
            messages = ([{"role": "system", "content": self.system}] if self.system else []) + \
                       [{"role": "user", "content": prompt}]
            resp = await self.endpoint.chat(messages, max_tokens=max_tokens, temperature=temperature, n=n,
                                            extra=extra)
            texts = [(c.get("message") or {}).get("content") or "" for c in _choices(resp)]
        else:
            resp = await self.endpoint.completions(prompt, max_tokens=max_tokens, temperature=temperature, n=n,
                                                   extra=extra)
            texts = [c.get("text") or "" for c in _choices(resp)]
        if len(texts) != n:
            raise ValueError(f"asked the endpoint for {n} choices, got {len(texts)}")
        return texts

    async def generate(self, prompts: list[str], *, n: int, max_tokens: int,
                       temperature: float, guide: dict | None = None) -> list[list[str]]:
        return list(await asyncio.gather(*(self._one(p, n, max_tokens, temperature, guide) for p in prompts),
                                         return_exceptions=True))


def _choices(resp: Any) -> list[dict]:
    choices = resp.get("choices") if isinstance(resp, dict) else None
    if not isinstance(choices, list):
        raise ValueError("endpoint reply has no 'choices' list")
    return sorted(choices, key=lambda c: c.get("index", 0))


# --- rows -----------------------------------------------------------------------------------------
def make_row(schema: pa.Schema, **values: Any) -> dict[str, Any]:
    """A row with exactly the schema's columns (unset ones None); an unknown column is a bug."""
    unknown = values.keys() - set(schema.names)
    if unknown:
        raise KeyError(f"columns {sorted(unknown)} are not in the schema {schema.names}")
    return {name: values.get(name) for name in schema.names}


def seed_value(seed: Any, key: str) -> tuple[str, str | None, str | None]:
    """(seed_id, the seed's `key` text, None) or (seed_id, None, reason) for a seed that cannot
    be used: it still becomes a row, so seeds in = rows out by seed_id."""
    if not isinstance(seed, dict):
        return "", None, f"bad_seed: {type(seed).__name__} is not a dict"
    sid = seed.get("seed_id")
    sid = "" if sid is None else str(sid)
    if not sid:
        return sid, None, "bad_seed: no seed_id"
    value = seed.get(key)
    if not isinstance(value, str) or not value.strip():
        return sid, None, f"bad_seed: no {key}"
    return sid, value, None
