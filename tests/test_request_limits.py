"""The request limits of the sampler fleet (phi4ray.serve.request_limits), one by one, without Ray: the
same checks run on the token-level path (SampleRequest.validate) and on the OpenAI HTTP routes
(check_openai_request); tests/test_serve.py sends the same requests to the real fleet."""
from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

from phi4ray.model import phi4_tokenizer as T
from phi4ray.model.tokenizer import CHAT_ROLES
from phi4ray.presets import ServeConfig
from phi4ray.run.errors import ConfigError
from phi4ray.serve.request_limits import (
    DEFAULT_MAX_REQUEST_TOKENS,
    MAX_LOGPROBS,
    MAX_MESSAGES,
    MAX_N,
    MAX_NEW_TOKENS,
    RequestLimits,
    SamplingError,
    chat_prompt_tokens,
    check_messages,
    check_openai_request,
    check_request,
    completion_prompt_tokens,
)
from phi4ray.serve.sampling import SampleRequest


def rejects(field: str, needle: str, fn, *args, **kwargs) -> SamplingError:
    with pytest.raises(SamplingError, match=needle) as info:
        fn(*args, **kwargs)
    assert info.value.field == field and field in str(info.value)
    return info.value


# --- one limit at a time -------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, -1, MAX_N + 1, 2.0, True, None])
def test_n_outside_1_to_max_n(n):
    rejects("n", rf"n={n!r} must be an integer in \[1, {MAX_N}\]", check_request, n=n, max_tokens=1)


def test_n_at_its_bounds():
    assert check_request(n=1, max_tokens=1) == 1
    assert check_request(n=MAX_N, max_tokens=1) == 1


@pytest.mark.parametrize("max_tokens", [0, -1, MAX_NEW_TOKENS + 1, 1.5, "8"])
def test_max_tokens_outside_its_range(max_tokens):
    rejects("max_tokens", rf"max_tokens={max_tokens!r} must be", check_request, max_tokens=max_tokens)


def test_max_tokens_at_its_bounds_and_zero_only_for_echo():
    assert check_request(max_tokens=MAX_NEW_TOKENS) == MAX_NEW_TOKENS
    assert check_request(max_tokens=1) == 1
    assert check_request(max_tokens=0, allow_zero_tokens=True) == 0
    rejects("max_completion_tokens", "max_completion_tokens=9000", check_request, max_tokens=9000,
            max_tokens_field="max_completion_tokens")


def test_prompt_plus_max_tokens_must_fit_the_context():
    assert check_request(max_tokens=12, prompt_tokens=500, context=512) == 12  # exactly full
    e = rejects("max_tokens", "prompt_ids of 501 tokens \\+ max_tokens=12 exceeds the model's context of 512",
                check_request, max_tokens=12, prompt_tokens=501, context=512, prompt_field="prompt_ids")
    assert "prompt_ids" in str(e)
    rejects("max_tokens", "prompt of 600 tokens \\+ max_tokens=1 exceeds", check_request, max_tokens=1, prompt_tokens=600,
            context=512)
    assert check_request(max_tokens=0, allow_zero_tokens=True, prompt_tokens=512, context=512) == 0  # echo only
    # unknown context or prompt length: not checked here (the engine's own check stays)
    assert check_request(max_tokens=12, prompt_tokens=10_000) == 12


def test_cost_cap_counts_prompts_n_and_max_tokens():
    small = RequestLimits(max_request_tokens=256)
    assert check_request(small, n=4, max_tokens=64) == 64  # exactly the cap
    e = rejects("max_tokens", r"n=4 x max_tokens=65 = 260 tokens exceeds the per-request cap of 256",
                check_request, small, n=4, max_tokens=65)
    assert "serve.max_request_tokens" in str(e)
    rejects("max_tokens", r"2 prompts x n=2 x max_tokens=65 = 260", check_request, small, n=2, max_tokens=65, prompts=2)
    assert check_request(small, n=2, max_tokens=64, prompts=2) == 64
    # the default cap admits the largest preset call (PTS on GPU: 32 samples x 2048 tokens) twice over
    assert DEFAULT_MAX_REQUEST_TOKENS >= 2 * 32 * 2048
    assert check_request(n=MAX_N, max_tokens=2048) == 2048


def test_omitted_max_tokens_becomes_what_every_limit_allows():
    assert check_request(max_tokens=None, prompt_tokens=100, context=512) == 412      # the rest of the context
    assert check_request(max_tokens=None, prompt_tokens=10, context=100_000) == MAX_NEW_TOKENS
    assert check_request(RequestLimits(max_request_tokens=256), n=4, max_tokens=None) == 64  # within the cap
    rejects("n", "leaves no max_tokens within the per-request cap", check_request,
            RequestLimits(max_request_tokens=3), n=4, max_tokens=None)
    rejects("messages", "leaves no room", check_request, max_tokens=None, prompt_tokens=512, context=512,
            prompt_field="messages")


@pytest.mark.parametrize("field", ["logprobs", "top_logprobs", "prompt_logprobs"])
def test_logprobs_bounds(field):
    for ok in (0, MAX_LOGPROBS):
        check_request(max_tokens=1, **{field: ok})
    for bad in (-1, MAX_LOGPROBS + 1, 2.0):  # -1 asks vLLM for the whole vocabulary at every position
        rejects(field, rf"{field}={bad!r} must be an integer in \[0, {MAX_LOGPROBS}\]",
                check_request, max_tokens=1, **{field: bad})


def test_temperature_and_top_p():
    check_request(max_tokens=1, temperature=0.0, top_p=1.0)
    check_request(max_tokens=1, temperature=2, top_p=0.01)
    rejects("temperature", "temperature=-1.0", check_request, max_tokens=1, temperature=-1.0)
    rejects("temperature", r"temperature=2.5 must be in \[0, 2\]", check_request, max_tokens=1, temperature=2.5)
    rejects("top_p", "top_p=0", check_request, max_tokens=1, top_p=0)


def test_message_count():
    check_messages([{"role": "user", "content": "hi"}] * MAX_MESSAGES)
    rejects("messages", f"{MAX_MESSAGES + 1} messages, more than the limit of {MAX_MESSAGES}",
            check_messages, [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1))
    rejects("messages", "non-empty", check_messages, [])
    rejects("messages", "non-empty", check_messages, "hi")


def test_message_roles():
    check_messages([{"role": r, "content": "x"} for r in CHAT_ROLES])
    check_messages([SimpleNamespace(role="user", content="x")])  # pydantic-style objects too
    for bad in ("developer", "function", "tool", "root", "", None):
        rejects("messages", rf"messages\[1\].role={bad!r} must be one of system, user, assistant \(the roles",
                check_messages, [{"role": "user", "content": "x"}, {"role": bad, "content": "x"}])
    rejects("messages", r"messages\[0\].role=None", check_messages, [{"content": "no role"}])


def test_limits_object_and_error_travel():
    with pytest.raises(ValueError, match="max_request_tokens=0"):
        RequestLimits(max_request_tokens=0)
    assert RequestLimits.from_dict({"max_request_tokens": 99, "roles": ["user"]}) == \
        RequestLimits(max_request_tokens=99, roles=("user",))
    assert RequestLimits.from_dict(None) == RequestLimits()
    e = pickle.loads(pickle.dumps(SamplingError("n=0 bad", "n")))  # a replica's error reaches the caller whole
    assert (str(e), e.field) == ("n=0 bad", "n")


def test_serve_config_cost_cap_knob():
    assert ServeConfig().max_request_tokens == DEFAULT_MAX_REQUEST_TOKENS
    assert ServeConfig(max_request_tokens=256).max_request_tokens == 256
    with pytest.raises(ConfigError, match="serve.max_request_tokens=0"):
        ServeConfig(max_request_tokens=0)


# --- the token-level path ----------------------------------------------------------------------
def test_sample_request_uses_the_shared_limits():
    ok = SampleRequest(prompt_ids=[1] * 500, n=4, max_tokens=12)
    assert ok.validate(max_model_len=512) is ok
    rejects("n", "n=65", SampleRequest(prompt_ids=[1], n=65).validate)
    rejects("max_tokens", "max_tokens=8193", SampleRequest(prompt_ids=[1], max_tokens=8193).validate)
    rejects("max_tokens", "prompt_ids of 501 tokens", SampleRequest(prompt_ids=[1] * 501, max_tokens=12).validate,
            max_model_len=512)
    rejects("max_tokens", "per-request cap of 256", SampleRequest(prompt_ids=[1], n=4, max_tokens=65).validate,
            limits=RequestLimits(max_request_tokens=256))
    rejects("max_tokens", "max_tokens is required", SampleRequest(prompt_ids=[1], max_tokens=None).validate)
    rejects("prompt_ids", "vocab size", SampleRequest(prompt_ids=[7, 99]).validate, vocab_size=50)
    rejects("temperature", "temperature", SampleRequest(prompt_ids=[1], temperature=-1.0).validate)


# --- the HTTP face: vLLM's request objects, read by attribute ------------------------------------
def chat_request(messages=None, **kw):
    fields = dict(messages=messages or [{"role": "user", "content": "hi"}], n=1, max_tokens=None,
                  max_completion_tokens=None, logprobs=False, top_logprobs=0, prompt_logprobs=None,
                  temperature=None, top_p=None, add_generation_prompt=True, continue_final_message=False,
                  truncate_prompt_tokens=None)
    return SimpleNamespace(**(fields | kw))


def completion_request(prompt="hi", **kw):
    fields = dict(prompt=prompt, n=1, max_tokens=16, logprobs=None, prompt_logprobs=None, echo=False,
                  temperature=None, top_p=None, add_special_tokens=True, truncate_prompt_tokens=None)
    return SimpleNamespace(**(fields | kw))


class WordTokenizer:
    """A stand-in HF tokenizer: one token per word, a chat turn is its role and content."""

    def encode(self, text, add_special_tokens=True):
        return text.split()

    def apply_chat_template(self, conversation, tokenize, add_generation_prompt, continue_final_message):
        assert tokenize is False
        text = " ".join(f"{m['role']} {m['content']}" for m in conversation)
        return text + (" assistant" if add_generation_prompt else "")


def test_chat_request_limits():
    tok = WordTokenizer()

    def check(req, limits=RequestLimits(), context=16):
        return check_openai_request(req, limits, chat=True, context=context,
                                    count_tokens=lambda r: chat_prompt_tokens(r, tok))

    check(chat_request(max_tokens=13))  # "user hi assistant": 3 tokens + 13 = 16, exactly the context
    rejects("max_tokens", "messages of 3 tokens \\+ max_tokens=14 exceeds the model's context of 16",
            check, chat_request(max_tokens=14))
    rejects("max_completion_tokens", "max_completion_tokens=14", check,
            chat_request(max_tokens=2, max_completion_tokens=14))  # the newer field wins, as in vLLM
    rejects("n", "n=65", check, chat_request(n=65, max_tokens=1))
    rejects("messages", r"messages\[0\].role='developer'", check, chat_request([{"role": "developer", "content": "x"}]))
    rejects("messages", "257 messages", check, chat_request([{"role": "user", "content": "x"}] * 257), context=None)
    rejects("top_logprobs", "top_logprobs=21", check, chat_request(logprobs=True, top_logprobs=21, max_tokens=1))
    rejects("top_logprobs", "top_logprobs=-1", check, chat_request(logprobs=True, top_logprobs=-1, max_tokens=1))
    rejects("max_tokens", "per-request cap of 8", check, chat_request(n=3, max_tokens=3), RequestLimits(max_request_tokens=8))
    req = chat_request(n=2)
    check(req, RequestLimits(max_request_tokens=8))  # omitted: the rest of the context (13), within the cap (4)
    assert req.max_completion_tokens == 4 and req.max_tokens is None


def test_chat_content_parts_count_as_their_text():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a b"}, {"type": "text", "text": "c"}]}]
    assert chat_prompt_tokens(chat_request(msgs), WordTokenizer()) == 5  # user a b c assistant

    class Broken(WordTokenizer):
        def apply_chat_template(self, *a, **k):
            raise ValueError("template error")

    assert chat_prompt_tokens(chat_request(msgs), Broken()) is None  # unknown: the engine checks the length


def test_completion_request_limits():
    tok = WordTokenizer()

    def check(req, limits=RequestLimits(), context=16):
        return check_openai_request(req, limits, chat=False, context=context,
                                    count_tokens=lambda r: completion_prompt_tokens(r, tok))

    check(completion_request("a b c d", max_tokens=12))
    rejects("max_tokens", "prompt of 5 tokens \\+ max_tokens=12", check, completion_request("a b c d e", max_tokens=12))
    check(completion_request([1] * 4, max_tokens=12))  # token ids: their count, no tokenizer
    rejects("max_tokens", "prompt of 5 tokens", check, completion_request([[1] * 2, [1] * 5], max_tokens=12))
    check(completion_request([1] * 30, max_tokens=12, truncate_prompt_tokens=4))  # vLLM keeps the last 4
    rejects("n", "n=65", check, completion_request(n=65, max_tokens=1))
    rejects("max_tokens", "max_tokens=8193", check, completion_request(max_tokens=8193), context=None)
    rejects("max_tokens", "max_tokens=0", check, completion_request(max_tokens=0))
    check(completion_request(max_tokens=0, echo=True))  # echo only: no generation
    rejects("logprobs", "logprobs=21", check, completion_request(logprobs=21, max_tokens=1))
    rejects("prompt_logprobs", "prompt_logprobs=-1", check, completion_request(prompt_logprobs=-1, max_tokens=1))
    rejects("max_tokens", "3 prompts x n=2 x max_tokens=2 = 12", check,
            completion_request(["a", "b", "c"], n=2, max_tokens=2), RequestLimits(max_request_tokens=10))
    req = completion_request("a b c d", max_tokens=None)
    check(req)
    assert req.max_tokens == 12


@pytest.fixture(scope="module")
def exported_tokenizer(tmp_path_factory):
    """The tokenizer files an exported model folder holds (what vLLM loads), without a model."""
    from transformers import AutoTokenizer  # deferred: only this test needs transformers

    out = tmp_path_factory.mktemp("tok")
    T.phi4_tokenizer().save_hf(out)
    return AutoTokenizer.from_pretrained(out)


def test_chat_count_matches_our_rendering_under_the_exported_template(exported_tokenizer):
    """The HTTP face counts a chat's prompt with the served model's HF chat template: the same
    ids as our own Phi-4 rendering (which vLLM's chat route is tested to use, test_serve.py)."""
    hf_tokenizer = exported_tokenizer
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12*12?"},
            {"role": "assistant", "content": "144"}, {"role": "user", "content": "And 13*13?"}]
    ours = len(T.phi4_tokenizer().render_chat(msgs, add_generation_prompt=True).ids)
    assert chat_prompt_tokens(chat_request(msgs), hf_tokenizer) == ours
    text = completion_request("def add(a, b):\n    return a + b")
    assert completion_prompt_tokens(text, hf_tokenizer) == len(T.phi4_tokenizer().encode(text.prompt))
