"""Every limit a request to the sampler fleet must meet, checked in one place for both of its faces.

The fleet answers on two paths: the token-level `sample` call (`SampleRequest`, from PTS, synthesis
and judging through a deployment handle) and the OpenAI HTTP routes (/v1/completions and
/v1/chat/completions through Ray's ingress). Both call `check_request` here, so a limit cannot hold
on one path and not the other. A request outside a limit raises `SamplingError` whose message names
the field; the HTTP face turns it into a 400 with that message.

Limits: n, max_tokens, prompt tokens + max_tokens within the model's context, the number of chat
messages and their roles, logprobs / top_logprobs / prompt_logprobs, temperature and top_p, and a
per-request cost cap on the tokens one request may generate (prompts x n x max_tokens,
`serve.max_request_tokens`): one request must not occupy a replica for minutes.

Plain Python (no Ray, no vLLM): the HTTP face hands in vLLM's request objects, read by attribute.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from phi4ray.model.tokenizer import CHAT_ROLES

MAX_N = 64
MAX_NEW_TOKENS = 8192
MAX_MESSAGES = 256
# the engine's own bound on top-k log-probs per position (serve_app passes it as vLLM's max_logprobs)
MAX_LOGPROBS = 20
# PTS on GPU asks for 32 samples x 2048 tokens (65,536) per call; twice that leaves room and still
# bounds one request to seconds of a GPU replica
DEFAULT_MAX_REQUEST_TOKENS = MAX_N * 2048
MAX_TEMPERATURE = 2.0  # OpenAI's range, and vLLM's SamplingParams refuses more
# the key of LLMConfig.experimental_configs that carries a deployment's limits to its replicas
LLM_CONFIG_KEY = "phi4ray_request_limits"


class SamplingError(ValueError):
    """A request outside what a sampler accepts; the message names the field (HTTP 400)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field

    def __reduce__(self):  # the field survives the trip from a replica back to the caller
        return type(self), (self.args[0] if self.args else "", self.field)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class RequestLimits:
    max_n: int = MAX_N
    max_tokens: int = MAX_NEW_TOKENS
    max_request_tokens: int = DEFAULT_MAX_REQUEST_TOKENS   # prompts x n x max_tokens, per request
    max_messages: int = MAX_MESSAGES
    max_logprobs: int = MAX_LOGPROBS
    # Phi-4's chat template renders these and silently drops any other message (a tool result
    # would vanish from the prompt), so another role is refused, not accepted and lost
    roles: tuple[str, ...] = CHAT_ROLES

    def __post_init__(self) -> None:
        for name in ("max_n", "max_tokens", "max_request_tokens", "max_messages"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"RequestLimits.{name}={value!r} must be a positive integer")
        if not _is_int(self.max_logprobs) or self.max_logprobs < 0:
            raise ValueError(f"RequestLimits.max_logprobs={self.max_logprobs!r} must be a non-negative integer")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "RequestLimits":
        d = dict(d or {})
        if "roles" in d:
            d["roles"] = tuple(d["roles"])
        return cls(**d)


DEFAULT_LIMITS = RequestLimits()


def _int_in(field: str, value: Any, low: int, high: int) -> None:
    if not _is_int(value) or not low <= value <= high:
        raise SamplingError(f"{field}={value!r} must be an integer in [{low}, {high}]", field)


def check_messages(messages: Any, limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """The chat conversation: a non-empty list of at most max_messages, each with a known role."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise SamplingError("messages must be a non-empty list of chat messages", "messages")
    if len(messages) > limits.max_messages:
        raise SamplingError(f"messages holds {len(messages)} messages, more than the limit of {limits.max_messages}",
                            "messages")
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, Mapping) else getattr(m, "role", None)
        if role not in limits.roles:
            raise SamplingError(f"messages[{i}].role={role!r} must be one of {', '.join(limits.roles)} "
                                f"(the roles Phi-4's chat template renders)", "messages")


def check_request(limits: RequestLimits = DEFAULT_LIMITS, *, n: Any = 1, max_tokens: Any = None,
                  max_tokens_field: str = "max_tokens", allow_zero_tokens: bool = False,
                  prompt_tokens: int | None = None, prompt_field: str = "prompt", prompts: int = 1,
                  context: int | None = None, messages: Any = None,
                  logprobs: Any = None, logprobs_field: str = "logprobs", top_logprobs: Any = None,
                  prompt_logprobs: Any = None, temperature: Any = None, top_p: Any = None) -> int:
    """Raise SamplingError (naming the field) for the first limit the request breaks; else return
    the max_tokens it runs with. An omitted max_tokens (None) becomes as many as every limit
    allows: the rest of the context, at most limits.max_tokens, within the cost cap.

    prompt_tokens: the longest prompt's length in tokens (None: not known here, not checked);
    prompts: how many prompts the request holds (a completions batch), each sampled n times.
    """
    if messages is not None:
        check_messages(messages, limits)
    _int_in("n", n, 1, limits.max_n)
    if not _is_int(prompts) or prompts < 1:
        raise SamplingError(f"{prompt_field} must hold at least one prompt", prompt_field)
    room = context - prompt_tokens if prompt_tokens is not None and context else None
    if max_tokens is None:
        if room is not None and room < 1:
            raise SamplingError(f"{prompt_field} of {prompt_tokens} tokens leaves no room in the model's context of "
                                f"{context} tokens", prompt_field)
        fits = limits.max_request_tokens // (prompts * n)
        max_tokens = min(limits.max_tokens, fits, room if room is not None else math.inf)
        if max_tokens < 1:
            raise SamplingError(f"n={n} x {prompts} prompt(s) leaves no {max_tokens_field} within the per-request "
                                f"cap of {limits.max_request_tokens} tokens (serve.max_request_tokens)", "n")
        max_tokens = int(max_tokens)
    else:
        _int_in(max_tokens_field, max_tokens, 0 if allow_zero_tokens else 1, limits.max_tokens)
        if room is not None and max_tokens > room:
            raise SamplingError(
                f"{prompt_field} of {prompt_tokens} tokens + {max_tokens_field}={max_tokens} exceeds the model's "
                f"context of {context} tokens", max_tokens_field)
        cost = prompts * n * max_tokens
        if cost > limits.max_request_tokens:
            shape = f"{prompts} prompts x " if prompts > 1 else ""
            raise SamplingError(
                f"{shape}n={n} x {max_tokens_field}={max_tokens} = {cost} tokens exceeds the per-request cap of "
                f"{limits.max_request_tokens} tokens (serve.max_request_tokens)", max_tokens_field)
    for field, value in ((logprobs_field, logprobs), ("top_logprobs", top_logprobs),
                         ("prompt_logprobs", prompt_logprobs)):
        if value is not None:
            _int_in(field, value, 0, limits.max_logprobs)
    if temperature is not None and not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
                                        and 0.0 <= float(temperature) <= MAX_TEMPERATURE):
        raise SamplingError(f"temperature={temperature!r} must be in [0, {MAX_TEMPERATURE:g}]", "temperature")
    if top_p is not None and not (isinstance(top_p, (int, float)) and not isinstance(top_p, bool)
                                  and 0.0 < float(top_p) <= 1.0):
        raise SamplingError(f"top_p={top_p!r} must be in (0, 1]", "top_p")
    return max_tokens


# --- the OpenAI HTTP face ---------------------------------------------------------------------
def _text_content(content: Any) -> Any:
    """A message's content as the chat template sees it: text parts joined by newlines (vLLM's
    'string' content format); other content is left as it is."""
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return content


def chat_prompt_tokens(request: Any, tokenizer: Any) -> int | None:
    """Tokens of a chat request's rendered prompt under the model's chat template (the template
    vLLM renders with); None when it cannot be rendered here (the engine then checks the length)."""
    conversation = [{**dict(m), "content": _text_content(dict(m).get("content"))} for m in request.messages]
    try:
        text = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=bool(getattr(request, "add_generation_prompt", True)),
            continue_final_message=bool(getattr(request, "continue_final_message", False)))
        return len(tokenizer.encode(text, add_special_tokens=False))
    except Exception:  # noqa: BLE001 - a conversation this template cannot render: vLLM will say why
        return None


def completion_prompts(request: Any) -> list:
    """A completions request's prompts: one string or id list, or a batch of them."""
    prompt = request.prompt
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt)):
        return [prompt]
    return list(prompt) if isinstance(prompt, list) else []


def completion_prompt_tokens(request: Any, tokenizer: Any) -> int | None:
    """The longest prompt of a completions request, in tokens (as vLLM tokenizes it)."""
    lengths = []
    for p in completion_prompts(request):
        if isinstance(p, str):
            if tokenizer is None:
                return None
            lengths.append(len(tokenizer.encode(p, add_special_tokens=bool(getattr(request, "add_special_tokens",
                                                                                      True)))))
        else:
            lengths.append(len(p))
    return max(lengths) if lengths else None


def _truncated(prompt_tokens: int | None, request: Any, context: int | None) -> int | None:
    """vLLM's truncate_prompt_tokens keeps the last k tokens (-1: the context)."""
    k = getattr(request, "truncate_prompt_tokens", None)
    if prompt_tokens is None or k is None:
        return prompt_tokens
    if k == -1:
        return min(prompt_tokens, context) if context else prompt_tokens
    return min(prompt_tokens, k) if k >= 0 else prompt_tokens


def check_openai_request(request: Any, limits: RequestLimits = DEFAULT_LIMITS, *, chat: bool,
                         context: int | None = None,
                         count_tokens: Callable[[Any], int | None] | None = None) -> None:
    """Check a /v1/chat/completions (chat=True) or /v1/completions request (vLLM's request
    objects, read by attribute); an omitted max_tokens is set on the request to what the limits
    allow. count_tokens(request) gives its (longest) prompt's length in tokens, or None."""
    if chat:
        check_messages(request.messages, limits)  # before rendering: a bad role must not reach the template
    prompt_tokens = _truncated(count_tokens(request) if count_tokens else None, request, context)
    if chat:
        field = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        given = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
        resolved = check_request(
            limits, n=1 if request.n is None else request.n, max_tokens=given, max_tokens_field=field,
            prompt_tokens=prompt_tokens, prompt_field="messages", context=context,
            top_logprobs=getattr(request, "top_logprobs", None),
            prompt_logprobs=getattr(request, "prompt_logprobs", None),
            temperature=request.temperature, top_p=request.top_p)
        if given is None:
            request.max_completion_tokens = resolved
        return
    prompts = completion_prompts(request)
    resolved = check_request(
        limits, n=request.n, max_tokens=request.max_tokens, allow_zero_tokens=bool(getattr(request, "echo", False)),
        prompt_tokens=prompt_tokens, prompt_field="prompt", prompts=max(len(prompts), 1), context=context,
        logprobs=request.logprobs, prompt_logprobs=getattr(request, "prompt_logprobs", None),
        temperature=request.temperature, top_p=request.top_p)
    if request.max_tokens is None:
        request.max_tokens = resolved
