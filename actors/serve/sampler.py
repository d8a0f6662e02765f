"""The sampler fleet: vLLM (or SGLang) engines as Ray Serve replicas, built on `ray.serve.llm`.

`PhiSampler` is Ray's own `LLMServer` (the OpenAI-compatible vLLM server behind `LLMConfig`)
with two additions the recipe needs:

- `sample(request)`: the in-cluster token-level call. Prompt token ids in, `n` samples out with
  their token ids and per-token log-probs, straight from the engine with prefix caching on. PTS
  asks for many completions of one prefix, so the shared prefix is computed once per replica.
- the request limits (phi4ray.serve.request_limits) on both faces: `sample` and the OpenAI routes
  (`chat`, `completions`, overridden here to check first) reject a request over a limit with a
  SamplingError / HTTP 400 naming the field; the limits travel in the LLMConfig.
- in-place weight refresh: each replica watches the weights registry (actors/serve/weights.py) and
  reloads a new checkpoint without restarting: the engine pauses (in-flight requests finish, new
  ones queue), vLLM reloads the weights, the prefix cache is dropped, generation resumes.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path

from ray import serve
from ray.llm._internal.common.callbacks.base import CallbackBase  # LLMConfig.callback_config's base
from ray.serve.llm.deployment import LLMServer
from transformers import AutoTokenizer
from vllm import SamplingParams
from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from actors.serve.request_guard import check_http, limits_of, rejected
from actors.serve.weights import model_shape, registry, repack_tied_head, target_key
from phi4ray.serve.request_limits import SamplingError
from phi4ray.serve.sampling import SampleRequest

logger = logging.getLogger("phi4ray.sampler")


class LocalFolderCallback(CallbackBase):
    """Skips Ray's node-initialisation task when the model is a folder this node can read: the
    task only downloads, and its extra worker process costs ~10 s of a replica's start on a
    laptop. A cloud URI (or a folder missing here) still goes through Ray's download."""

    async def on_before_node_init(self) -> None:
        if Path(self.llm_config.model_loading_config.model_source).is_dir():
            self.ctx.run_init_node = False


class PhiSampler(LLMServer):
    async def __init__(self, llm_config, **kwargs):
        await super().__init__(llm_config, **kwargs)
        self._model_source = llm_config.model_loading_config.model_source
        self._weights = self._model_source
        self._shape = model_shape(self._model_source)
        # the engine's context (engine_kwargs' max_model_len, else the model's own), for both faces
        self._max_model_len = int(self.engine._engine_client.model_config.max_model_len)
        self._limits = limits_of(llm_config)
        # our own copy of the model's tokenizer for counting HTTP prompts: vLLM's instance may be
        # mid-call with truncation set (a HF fast tokenizer is not shareable across threads then)
        self._tokenizer = AutoTokenizer.from_pretrained(self._model_source)
        self._reloads = 0
        self._served = 0
        self._version = 0
        self._poll_s = 1.0
        ctx = serve.get_replica_context()
        self._key, self._replica = target_key(ctx.app_name, ctx.deployment), ctx.replica_id.unique_id
        self._registry = registry()
        # before the first request: a replica that autoscaling adds must serve the current weights
        await self._sync_weights()
        self._watcher = asyncio.get_running_loop().create_task(self._watch_weights())

    # --- token-level sampling ----------------------------------------------------------------
    async def sample(self, request: dict) -> list[dict]:
        """SampleRequest (as a dict) -> [{"token_ids", "logprobs", "finish_reason"}] * n."""
        req = SampleRequest.from_dict(request).validate(self._shape["vocab_size"], self._max_model_len, self._limits)
        params = SamplingParams(
            n=req.n, temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_tokens,
            seed=req.seed, stop_token_ids=req.stop_ids or None, logprobs=0, detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
            structured_outputs=StructuredOutputsParams(**req.guide) if req.guide else None,
        )
        # LLMServer keeps vLLM's AsyncLLM on its engine wrapper; the OpenAI path would detokenize
        # and we would have to re-tokenize, which PTS must never do.
        client = self.engine._engine_client
        final = None
        async for out in client.generate(TokensPrompt(prompt_token_ids=req.prompt_ids), params,
                                         request_id=f"phi4ray-{uuid.uuid4().hex}"):
            final = out
        self._served += 1
        aborted = [c.finish_reason for c in final.outputs if c.finish_reason not in ("stop", "length")]
        if aborted:  # not an answer (an abort, a guide the engine gave up on): fail it, so the caller retries
            raise RuntimeError(f"the engine ended the request without an answer (finish_reason {aborted[0]!r})")
        return [
            {"token_ids": list(c.token_ids),
             "logprobs": [float(lp[t].logprob) for t, lp in zip(c.token_ids, c.logprobs)],
             "finish_reason": c.finish_reason or "length"}
            for c in final.outputs
        ]

    # --- the OpenAI routes: the same limits, checked before the engine sees the request -----------
    async def chat(self, request, raw_request_info=None):
        error = await self._check_http(request, chat=True)
        return rejected(error) if error else await super().chat(request, raw_request_info)

    async def completions(self, request, raw_request_info=None):
        error = await self._check_http(request, chat=False)
        return rejected(error) if error else await super().completions(request, raw_request_info)

    async def _check_http(self, request, chat: bool) -> SamplingError | None:
        return await check_http(request, self._limits, chat=chat, context=self._max_model_len,
                                tokenizer=self._tokenizer)

    # --- weight refresh (see actors/serve/weights.py) ---------------------------------------------
    async def _sync_weights(self) -> None:
        """Load the registry's target weights for this deployment if they are newer than ours."""
        target = await self._registry.get.remote(self._key)
        if not target or target[0] <= self._version:
            return
        version, path = target
        error = None
        try:
            await self._reload(path)
        except Exception as e:  # a bad checkpoint must not take the replica down: keep the old one
            logger.error("weight refresh to %s failed: %s", path, e)
            error = f"{type(e).__name__}: {e}"
        self._version = version
        await self._registry.ack.remote(self._key, self._replica, version, error)

    async def _watch_weights(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                await self._sync_weights()
            except Exception as e:  # registry briefly unreachable: keep serving, retry
                logger.warning("weights registry unreachable: %s", e)

    async def _reload(self, weights: str) -> None:
        if weights == self._weights:
            return
        shape = model_shape(weights)
        if shape != self._shape:
            raise ValueError(f"{weights}: model shape {shape} differs from the served {self._shape}; "
                             "a new shape needs a new app, not a weight refresh")
        t0 = time.time()
        await self.engine.pause(mode="wait", clear_cache=True)
        try:
            await self.engine.collective_rpc("reload_weights", kwargs={"weights_path": weights})
            await self.engine.collective_rpc("apply_model", args=(repack_tied_head,))  # see its doc
            await self.engine.reset_prefix_cache()  # cached KV was computed by the old weights
        finally:
            await self.engine.resume()
        self._weights = weights
        self._reloads += 1
        logger.info("reloaded weights from %s in %.1fs", weights, time.time() - t0)

    async def info(self) -> dict:
        return {"weights": self._weights, "version": self._version, "reloads": self._reloads,
                "served": self._served, "pid": os.getpid(),
                "max_model_len": self._max_model_len, **self._shape}
