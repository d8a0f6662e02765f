"""Async client for an external OpenAI-compatible endpoint (a large teacher model, a judge).

Synthesis and judging actors call models that this system does not serve: a hosted API or a
vLLM/SGLang server elsewhere. Those calls fail in ordinary ways (overload, restarts, slow
replies), so this client retries what is transient and fails fast on what is not, and bounds both
concurrency and request rate so a thousand actors cannot flood a shared teacher.
The API key is read from an environment variable at request time: it lives in no config, no repr,
no log line and no exception message, so configs and run manifests can be shared freely.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EndpointConfig:
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"  # the variable's name; its value is never stored here
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 20.0
    requests_per_s: float | None = None
    max_concurrency: int = 16

    def __post_init__(self) -> None:
        checks = {
            "base_url": self.base_url.startswith(("http://", "https://")),
            "model": bool(self.model),
            "api_key_env": bool(self.api_key_env),
            "timeout_s": self.timeout_s > 0,
            "max_retries": self.max_retries >= 0,
            "backoff_s": self.backoff_s >= 0,
            "backoff_max_s": self.backoff_max_s >= self.backoff_s,
            "requests_per_s": self.requests_per_s is None or self.requests_per_s > 0,
            "max_concurrency": self.max_concurrency >= 1,
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(f"EndpointConfig.{field}: invalid value {getattr(self, field)!r}")


class EndpointError(RuntimeError):
    """A request that failed for good; `retryable` says whether trying later could help."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class RateLimiter:
    """Async token bucket: on average `rate` acquisitions a second, at most `burst` at once."""

    def __init__(self, rate: float, burst: int = 1):
        if rate <= 0 or burst < 1:
            raise ValueError(f"RateLimiter: rate must be > 0 and burst >= 1, got {rate}, {burst}")
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = asyncio.Lock()  # waiters queue here in order, so none starves

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self) -> None:
        async with self._lock:
            self._refill()
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1


def _server_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        return str(err.get("message", err))[:200]
    return str(err)[:200]


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return max(0.0, float(resp.headers["retry-after"]))
    except (KeyError, ValueError):  # absent, or an HTTP date: fall back to our own backoff
        return None


class OpenAIEndpoint:
    """One client per event loop; share it across the tasks of that loop."""

    def __init__(self, config: EndpointConfig):
        self.config = config
        self._client = httpx.AsyncClient(base_url=config.base_url, timeout=config.timeout_s)
        self._sem = asyncio.Semaphore(config.max_concurrency)
        self._limiter = RateLimiter(config.requests_per_s) if config.requests_per_s else None
        # requests: HTTP attempts sent; retries: attempts after the first; failures: calls that raised
        self.stats = {"requests": 0, "retries": 0, "failures": 0}

    def __repr__(self) -> str:
        return f"OpenAIEndpoint(base_url={self.config.base_url!r}, model={self.config.model!r})"

    async def __aenter__(self) -> OpenAIEndpoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.config.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _backoff(self, attempt: int) -> float:
        # full jitter: many actors failing together must not retry in lockstep
        cfg = self.config
        return random.uniform(0, min(cfg.backoff_max_s, cfg.backoff_s * 2**attempt))

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        # only the path goes into messages: a query string may carry credentials
        where = f"{method} {self._client.base_url.path.rstrip('/')}{path}"
        for attempt in range(self.config.max_retries + 1):
            try:
                async with self._sem:
                    if self._limiter:
                        await self._limiter.acquire()
                    self.stats["requests"] += 1
                    resp = await self._client.request(method, path, json=body, headers=self._headers())
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as e:
                err = EndpointError(f"{where}: {type(e).__name__}", retryable=True)
                wait = None
            else:
                if resp.status_code < 400:
                    return resp.json()
                status = resp.status_code
                err = EndpointError(f"{where}: HTTP {status}: {_server_message(resp)}", status=status,
                                    retryable=status == 429 or status >= 500)
                wait = _retry_after(resp)
            if not err.retryable or attempt == self.config.max_retries:
                break
            wait = self._backoff(attempt) if wait is None else wait
            log.warning("%s (retry %d/%d in %.2fs)", err, attempt + 1, self.config.max_retries, wait)
            self.stats["retries"] += 1
            await asyncio.sleep(wait)  # outside the semaphore: a backing-off call holds no slot
        self.stats["failures"] += 1
        raise err

    async def completions(self, prompt: str | list[int], *, max_tokens: int, temperature: float = 1.0,
                          top_p: float = 1.0, n: int = 1, logprobs: int | None = None,
                          stop: str | list[str] | None = None, seed: int | None = None,
                          extra: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.config.model, "prompt": prompt, "max_tokens": max_tokens,
                                "temperature": temperature, "top_p": top_p, "n": n}
        optional = {"logprobs": logprobs, "stop": stop, "seed": seed}
        body.update({k: v for k, v in optional.items() if v is not None})
        body.update(extra or {})  # server-specific knobs (vLLM's top_k, ...) pass through untouched
        return await self._request("POST", "/completions", body)

    async def chat(self, messages: list[dict[str, Any]], *, max_tokens: int, temperature: float = 1.0,
                   n: int = 1, seed: int | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.config.model, "messages": messages,
                                "max_tokens": max_tokens, "temperature": temperature, "n": n}
        if seed is not None:
            body["seed"] = seed
        body.update(extra or {})
        return await self._request("POST", "/chat/completions", body)

    async def models(self) -> list[str]:
        return [m["id"] for m in (await self._request("GET", "/models"))["data"]]
