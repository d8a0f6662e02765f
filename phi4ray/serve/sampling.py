"""The token-level sampling contract between samplers and the actors that draw on them.

PTS, synthesis and judging ask for `n` continuations of a prompt given as token ids and get token
ids with per-token log-probs back: nothing is decoded and re-tokenised on the way, so a PTS prefix
is exactly the tokens that were sampled. Plain Python so that algorithms can be unit-tested
against a scripted sampler and run against the Serve fleet unchanged.
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from typing import Protocol

# the limits live in request_limits (one check for the token path and the HTTP routes); re-exported
# here, where callers of the token-level contract have always found them
from phi4ray.serve.guide import check_guide
from phi4ray.serve.request_limits import DEFAULT_LIMITS, MAX_N, MAX_NEW_TOKENS, RequestLimits, SamplingError, check_request

__all__ = ["MAX_N", "MAX_NEW_TOKENS", "RequestLimits", "Sample", "SampleRequest", "Sampler", "SamplingError"]


def derived_seed(seed: int, key: str) -> int:
    """A sampling seed for one prompt or item: a function of (seed, key) only, in vLLM's
    non-negative int32 range. One seed for every request would give equal prompts equal samples;
    a seed per key keeps them independent and still reproducible (a retried call, a resumed run)."""
    return zlib.crc32(f"{seed}\0{key}".encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class SampleRequest:
    prompt_ids: list[int]
    n: int = 1
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_ids: list[int] = field(default_factory=list)
    # structured output (phi4ray.serve.guide): {"regex": ...}, {"choice": [...]} or {"json": schema}
    guide: dict | None = None

    def validate(self, vocab_size: int | None = None, max_model_len: int | None = None,
                 limits: RequestLimits = DEFAULT_LIMITS) -> "SampleRequest":
        """The token-level checks (ids), then every shared request limit (phi4ray.serve.request_limits)."""
        if not isinstance(self.prompt_ids, list) or not self.prompt_ids:
            raise SamplingError("prompt_ids must be a non-empty list of token ids", "prompt_ids")
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.prompt_ids):
            raise SamplingError("prompt_ids must hold non-negative integers", "prompt_ids")
        if vocab_size is not None and max(self.prompt_ids) >= vocab_size:
            raise SamplingError(f"prompt_ids holds id {max(self.prompt_ids)} >= vocab size {vocab_size}", "prompt_ids")
        if self.max_tokens is None:  # no "as many as fit" here: a token-level caller says how many
            raise SamplingError("max_tokens is required", "max_tokens")
        check_request(limits, n=self.n, max_tokens=self.max_tokens, prompt_tokens=len(self.prompt_ids),
                      prompt_field="prompt_ids", context=max_model_len, temperature=self.temperature, top_p=self.top_p)
        check_guide(self.guide)
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "SampleRequest":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise SamplingError(f"unknown fields {sorted(unknown)}", "request")
        if "prompt_ids" not in d:
            raise SamplingError("prompt_ids is required", "prompt_ids")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Sample:
    token_ids: list[int]
    logprobs: list[float]  # log p of each sampled token under the sampler's model
    finish_reason: str     # "stop" (a stop id or EOS) or "length"

    @property
    def cumulative_logprob(self) -> float:
        return float(sum(self.logprobs))


class Sampler(Protocol):
    """Anything that answers token-level sampling calls: the Serve fleet, or a scripted fake."""

    async def sample(self, request: SampleRequest) -> list[Sample]: ...
