"""The HTTP face of the request limits (phi4ray.request_limits) on a sampler replica.

Ray's `OpenAiIngress` forwards /v1/chat/completions and /v1/completions to the replica's `chat`
and `completions`; a first chunk that is an `ErrorResponse` becomes an HTTP error with its code.
`PhiSampler` (vLLM) and `PhiSGLangSampler` check a request before handing it to the engine and
answer a rejected one with a 400 ErrorResponse naming the field, through the ingress's own error
path (the same JSON body as vLLM's own 400s, no traceback in it).
"""
from __future__ import annotations

from collections.abc import AsyncGenerator

from ray.llm._internal.serve.core.configs.openai_api_models import ErrorInfo, ErrorResponse

from phi4ray.request_limits import LLM_CONFIG_KEY, RequestLimits, SamplingError


def limits_of(llm_config) -> RequestLimits:
    """The limits `sampler_llm_config` put on this deployment (the defaults if none)."""
    return RequestLimits.from_dict((llm_config.experimental_configs or {}).get(LLM_CONFIG_KEY))


def error_response(error: SamplingError) -> ErrorResponse:
    return ErrorResponse(error=ErrorInfo(message=str(error), type="BadRequestError",
                                         param=getattr(error, "field", None), code=400))


async def rejected(error: SamplingError) -> AsyncGenerator[ErrorResponse, None]:
    """The stream a rejected request gets instead of the engine's: one 400 ErrorResponse."""
    yield error_response(error)
