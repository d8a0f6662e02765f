"""`FleetEngine`: the Serve sampler fleet as a synthesis `Engine` (phi4ray.data.synth.llm).

Synthesis steps speak text; the fleet speaks token ids. Each prompt becomes one user turn in the served
model's chat format (`Tokenizer.render_prompt`, the same rendering the judges and PTS use), is sampled `n` times
through a `FleetSampler` (replica loss retried there) and each sample is decoded without its
end of turn. A prompt that fails (too long for the context, rejected) fails alone: its slot
holds the exception, so call_all retries it without its batch-mates.

With `seed` set, every prompt gets its own sampling seed derived from (seed, prompt text): a chunk
redone after a crash samples exactly what the lost run would have, so resuming changes nothing,
at any temperature.
"""
from __future__ import annotations

import asyncio

from actors.serve.names import APP_NAME
from actors.serve.sampler_client import FleetSampler
from phi4ray.model.tokenizer import tokenizer_for
from phi4ray.serve.sampling import SampleRequest, derived_seed


class FleetEngine:
    def __init__(self, deployment: str = "", app: str = APP_NAME, *, seed: int | None = None, sampler=None,
                 model_dir: str | None = None):
        if sampler is None:
            sampler = FleetSampler(deployment, app)
        self.sampler, self.seed = sampler, seed
        self.tok = tokenizer_for(model_dir)  # the served model's (None: Phi-4's)

    def _seed_for(self, prompt: str) -> int | None:
        return None if self.seed is None else derived_seed(self.seed, prompt)

    async def _one(self, prompt: str, n: int, max_tokens: int, temperature: float, guide: dict | None) -> list[str]:
        req = SampleRequest(prompt_ids=self.tok.render_prompt(prompt), n=n, max_tokens=max_tokens,
                            temperature=temperature, seed=self._seed_for(prompt), stop_ids=[self.tok.end_turn_id],
                            guide=guide)
        try:
            samples = await self.sampler.sample(req)
        except Exception as e:
            # a replica's exception arrives wrapped in a RayTaskError whose message is the replica's
            # repr; the row's reason should be what went wrong (vLLM or SamplingError's message)
            cause = getattr(e, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
        return [self.tok.decode_response(s.token_ids) for s in samples]

    async def generate(self, prompts: list[str], *, n: int, max_tokens: int,
                       temperature: float, guide: dict | None = None) -> list[list[str]]:
        return list(await asyncio.gather(*(self._one(p, n, max_tokens, temperature, guide) for p in prompts),
                                         return_exceptions=True))
