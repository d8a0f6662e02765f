"""Async client for an external OpenAI-compatible endpoint (a large teacher model, a judge).

Synthesis and judging actors call models that this system does not serve: a hosted API or a
vLLM/SGLang server elsewhere. Those calls fail in ordinary ways (overload, restarts, slow
replies), so this client retries what is transient and fails fast on what is not, and bounds both
concurrency and request rate so a thousand actors cannot flood a shared teacher. The retry policy
and the rate limit are the shared ones of phi4ray.run.retry (tenacity, aiolimiter).
The API key is read from an environment variable at request time: it lives in no config, no repr,
no log line and no exception message, so configs and run manifests can be shared freely.
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

import httpx

from phi4ray.run.retry import rate_limiter, retry_after_s, retrying

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
    """A request that failed for good; `retryable` says whether trying later could help, and
    `retry_after` is the wait (seconds) the server asked for, if it did."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


def _retryable(err: BaseException) -> bool:
    return isinstance(err, EndpointError) and err.retryable


def _server_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        return str(err.get("message", err))[:200]
    return str(err)[:200]


class OpenAIEndpoint:
    """One client per event loop; share it across the tasks of that loop."""

    def __init__(self, config: EndpointConfig):
        self.config = config
        self._client = httpx.AsyncClient(base_url=config.base_url, timeout=config.timeout_s)
        self._sem = asyncio.Semaphore(config.max_concurrency)
        self._limiter = rate_limiter(config.requests_per_s) if config.requests_per_s else None
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

    async def _attempt(self, method: str, path: str, body: dict[str, Any] | None, where: str) -> Any:
        async with self._sem:  # held for the request only: a call backing off holds no slot
            if self._limiter:
                await self._limiter.acquire()
            self.stats["requests"] += 1
            try:
                resp = await self._client.request(method, path, json=body, headers=self._headers())
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as e:
                # from None: httpx's own message names the full URL, whose query string may carry credentials
                raise EndpointError(f"{where}: {type(e).__name__}", retryable=True) from None
        if resp.status_code < 400:
            return resp.json()
        status = resp.status_code
        raise EndpointError(f"{where}: HTTP {status}: {_server_message(resp)}", status=status,
                            retryable=status == 429 or status >= 500, retry_after=retry_after_s(resp.headers))

    def _on_retry(self, err: BaseException, retry: int, wait: float) -> None:
        log.warning("%s (retry %d/%d in %.2fs)", err, retry, self.config.max_retries, wait)
        self.stats["retries"] += 1

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        # only the path goes into messages: a query string may carry credentials
        where = f"{method} {self._client.base_url.path.rstrip('/')}{path}"
        cfg = self.config
        policy = retrying(retries=cfg.max_retries, backoff_s=cfg.backoff_s, backoff_max_s=cfg.backoff_max_s,
                          retry=_retryable, on_retry=self._on_retry)
        try:
            return await policy(self._attempt, method, path, body, where)
        except EndpointError:
            self.stats["failures"] += 1
            raise

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
