"""The one retry policy of every call that can fail transiently, and the request-rate limit.

Three callers share it: the HTTP client of external endpoints (phi4ray.serve.endpoint), the Serve fleet
client (actors.serve.sampler_client) and the synthesis call layer (phi4ray.data.synth.llm). Each says what is
worth retrying (an exception predicate); the rest is common and lives here, on kept libraries:
- tenacity runs the attempts: up to 1 + `retries`, full-jitter exponential backoff
  (`wait_random_exponential`: the n-th wait is uniform in [0, min(max, base * 2**(n-1))], so many
  callers failing together do not retry in lockstep), the last error re-raised as itself;
- a server's Retry-After, carried by the error (seconds: `retry_after` on phi4ray.serve.endpoint's
  EndpointError, `retry_after_s` on Ray Serve's BackPressureError), replaces our backoff for that
  wait: the server knows when it will have room;
- aiolimiter's leaky bucket bounds the request rate.
"""
from __future__ import annotations

import email.utils
import math
import time
from typing import Callable, Mapping

from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential
from tenacity.wait import wait_base

# called before each backoff sleep with (the error, the retry about to be made: 1, 2, ..., seconds to wait)
OnRetry = Callable[[BaseException, int, float], None]
# where an error carries the server's wait: EndpointError.retry_after, Serve's BackPressureError.retry_after_s
RETRY_AFTER_ATTRS = ("retry_after", "retry_after_s")


class wait_retry_after(wait_base):
    """The wait the failed attempt's error carries (the server's say) when it has one, else `fallback`."""

    def __init__(self, fallback: wait_base):
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        err = retry_state.outcome.exception() if retry_state.outcome else None
        for attr in RETRY_AFTER_ATTRS:
            after = getattr(err, attr, None)
            if isinstance(after, (int, float)) and after >= 0:
                return float(after)
        return self.fallback(retry_state)


def _seconds(value: str | None, scale: float = 1.0) -> float | None:
    try:
        seconds = float(value) * scale  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None  # "inf"/"nan" must not hang a caller


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds a response asks the client to wait, None if it does not say: OpenAI's retry-after-ms
    when present, else Retry-After (delay-seconds or an HTTP date)."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        seconds = _seconds(headers.get(name), scale)
        if seconds is not None:
            return seconds
    try:
        when = email.utils.parsedate_to_datetime(headers.get("retry-after", ""))
    except (TypeError, ValueError):  # absent or malformed: our own backoff decides
        return None
    return max(0.0, when.timestamp() - time.time())


def retrying(*, retries: int, backoff_s: float, backoff_max_s: float, retry: Callable[[BaseException], bool],
             on_retry: OnRetry | None = None) -> AsyncRetrying:
    """A tenacity policy: `await retrying(...)(fn, *args)` calls the coroutine function `fn` up to
    1 + `retries` times while it raises an error `retry` accepts, and re-raises the last error
    (or the first that `retry` refuses) unchanged."""
    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None and state.next_action is not None:
            on_retry(state.outcome.exception(), state.attempt_number, state.next_action.sleep)

    return AsyncRetrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait_retry_after(wait_random_exponential(multiplier=backoff_s, max=backoff_max_s)),
        retry=retry_if_exception(retry), before_sleep=before_sleep, reraise=True)


def rate_limiter(rate: float, burst: int = 1) -> AsyncLimiter:
    """On average `rate` acquisitions a second and at most `burst` at once (`async with` it, or
    `await .acquire()`). Bound to the event loop it is first used in, as the clients using it are."""
    if rate <= 0 or burst < 1:
        raise ValueError(f"rate_limiter: rate must be > 0 and burst >= 1, got {rate}, {burst}")
    # aiolimiter's bucket holds max_rate and drains max_rate / time_period a second
    return AsyncLimiter(burst, burst / rate)
