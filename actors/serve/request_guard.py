"""The HTTP face of the request limits (phi4ray.serve.request_limits) on a sampler replica.

Ray's `OpenAiIngress` forwards /v1/chat/completions and /v1/completions to the replica's `chat`
and `completions`; a first chunk that is an `ErrorResponse` becomes an HTTP error with its code.
`PhiSampler` (vLLM) and `PhiSGLangSampler` check a request before handing it to the engine and
answer a rejected one with a 400 ErrorResponse naming the field, through the ingress's own error
path (the same JSON body as vLLM's own 400s, no traceback in it).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

from ray.llm._internal.serve.core.configs.openai_api_models import ErrorInfo, ErrorResponse

from phi4ray.serve.request_limits import (
    LLM_CONFIG_KEY,
    RequestLimits,
    SamplingError,
    chat_prompt_tokens,
    check_openai_request,
    completion_prompt_tokens,
)

logger = logging.getLogger("phi4ray.sampler")


def limits_of(llm_config) -> RequestLimits:
    """The limits `sampler_llm_config` put on this deployment (the defaults if none)."""
    return RequestLimits.from_dict((llm_config.experimental_configs or {}).get(LLM_CONFIG_KEY))


def error_response(error: SamplingError) -> ErrorResponse:
    return ErrorResponse(error=ErrorInfo(message=str(error), type="BadRequestError",
                                         param=getattr(error, "field", None), code=400))


async def check_http(request, limits: RequestLimits, *, chat: bool, context: int, tokenizer) -> SamplingError | None:
    """The limits' verdict on an OpenAI chat or completion request (None: within them). Prompts are
    counted with the replica's own tokenizer and chat template."""
    count = chat_prompt_tokens if chat else completion_prompt_tokens

    def prompt_tokens(r) -> int | None:
        try:
            return count(r, tokenizer)
        except Exception as e:  # noqa: BLE001 - not countable here: the engine's own length check stays
            logger.warning("could not count a prompt's tokens (%s); the engine checks its length", e)
            return None

    try:
        # off the event loop: rendering and tokenizing a long prompt would stall every stream
        await asyncio.to_thread(check_openai_request, request, limits, chat=chat, context=context,
                                count_tokens=prompt_tokens)
    except SamplingError as e:
        return e
    return None


async def rejected(error: SamplingError) -> AsyncGenerator[ErrorResponse, None]:
    """The stream a rejected request gets instead of the engine's: one 400 ErrorResponse."""
    yield error_response(error)
