"""The token-level sampling contract between samplers and the actors that draw on them.

PTS, synthesis and judging ask for `n` continuations of a prompt given as token ids and get token
ids with per-token log-probs back: nothing is decoded and re-tokenised on the way, so a PTS prefix
is exactly the tokens that were sampled. Plain Python so that algorithms can be unit-tested
against a scripted sampler and run against the Serve fleet unchanged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

MAX_N = 64
MAX_NEW_TOKENS = 8192


class SamplingError(ValueError):
    """A request outside what a sampler accepts; the message names the field (HTTP 400)."""


@dataclass(frozen=True)
class SampleRequest:
    prompt_ids: list[int]
    n: int = 1
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_ids: list[int] = field(default_factory=list)

    def validate(self, vocab_size: int | None = None, max_model_len: int | None = None) -> "SampleRequest":
        if not isinstance(self.prompt_ids, list) or not self.prompt_ids:
            raise SamplingError("prompt_ids must be a non-empty list of token ids")
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.prompt_ids):
            raise SamplingError("prompt_ids must hold non-negative integers")
        if vocab_size is not None and max(self.prompt_ids) >= vocab_size:
            raise SamplingError(f"prompt_ids holds id {max(self.prompt_ids)} >= vocab size {vocab_size}")
        if not isinstance(self.n, int) or not 1 <= self.n <= MAX_N:
            raise SamplingError(f"n={self.n!r} must be an integer in [1, {MAX_N}]")
        if not isinstance(self.max_tokens, int) or not 1 <= self.max_tokens <= MAX_NEW_TOKENS:
            raise SamplingError(f"max_tokens={self.max_tokens!r} must be an integer in [1, {MAX_NEW_TOKENS}]")
        if not 0.0 <= float(self.temperature) <= 5.0:
            raise SamplingError(f"temperature={self.temperature!r} must be in [0, 5]")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise SamplingError(f"top_p={self.top_p!r} must be in (0, 1]")
        if max_model_len is not None and len(self.prompt_ids) + self.max_tokens > max_model_len:
            raise SamplingError(
                f"prompt of {len(self.prompt_ids)} tokens + max_tokens={self.max_tokens} exceeds the "
                f"model's context of {max_model_len} tokens")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "SampleRequest":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise SamplingError(f"unknown fields {sorted(unknown)}")
        if "prompt_ids" not in d:
            raise SamplingError("prompt_ids is required")
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
