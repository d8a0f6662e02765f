"""`FleetSampler`: the token-level `Sampler` over the Serve fleet, for PTS, synthesis and judges.

Calls go through a Serve deployment handle (no HTTP, no tokenisation). A replica that dies
mid-call costs a retry on another replica, never a lost or duplicated answer: a sampling call has
no side effects, so retrying it is safe. A request the sampler rejects (SamplingError) is not
retried. The policy (full-jitter backoff, attempt cap) is the shared one of phi4ray.run.retry; what
counts as transient, Ray's and Serve's errors of a lost or busy replica, is said here.

A retry lands on whichever replica the router picks, so it answers the same only if the request
carries its own seed: with `seed` set, every request that names none gets one derived from
(seed, prompt ids), and a call retried after a replica died (or a run resumed after a crash)
samples exactly what the lost call would have. Without it, vLLM draws from the replica's own
random state and a retry is a fresh draw: still counted once, but not the same answer.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging

from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from actors.serve.names import APP_NAME
from phi4ray.run.retry import retrying
from phi4ray.serve.sampling import Sample, SampleRequest, derived_seed

logger = logging.getLogger("phi4ray.sampler_client")
RETRYABLE = (RayActorError, ActorDiedError, ActorUnavailableError, BackPressureError, DeploymentUnavailableError)


class FleetSampler:
    def __init__(self, deployment: str, app: str = APP_NAME, max_retries: int = 8,
                 backoff_s: float = 1.0, backoff_max_s: float = 30.0, seed: int | None = None):
        self.deployment, self.app, self.seed = deployment, app, seed
        self.max_retries, self.backoff_s, self.backoff_max_s = max_retries, backoff_s, backoff_max_s
        self.retries = 0
        self._handle = None

    def _get_handle(self):
        if self._handle is None:  # created lazily: the client may be pickled into other actors
            self._handle = serve.get_deployment_handle(self.deployment, self.app)
        return self._handle

    def __getstate__(self):
        return {**self.__dict__, "_handle": None}

    def _on_retry(self, err: BaseException, retry: int, wait: float) -> None:
        self.retries += 1
        logger.warning("sampler call failed (%s); retry %d in %.1fs", type(err).__name__, retry, wait)

    async def _once(self, payload: dict) -> list[Sample]:
        out = await self._get_handle().sample.remote(payload)
        return [Sample(**s) for s in out]

    async def sample(self, request: SampleRequest) -> list[Sample]:
        if self.seed is not None and request.seed is None:
            request = dataclasses.replace(request, seed=derived_seed(self.seed, ",".join(map(str, request.prompt_ids))))
        policy = retrying(retries=self.max_retries, backoff_s=self.backoff_s, backoff_max_s=self.backoff_max_s,
                          retry=lambda e: isinstance(e, RETRYABLE), on_retry=self._on_retry)
        return await policy(self._once, request.to_dict())

    def sample_sync(self, request: SampleRequest) -> list[Sample]:
        return asyncio.run(self.sample(request))
