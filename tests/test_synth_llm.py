"""Synthesis plumbing: versioned templates, the LLM call layer, the endpoint engine, configs.

Everything runs on scripted engines (phi4ray.data.synth.llm.ScriptedEngine) or an in-process HTTP
transport: no model, no network, no Ray.
"""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from phi4ray.data.synth.llm import (
    CallConfig,
    EndpointEngine,
    Outcome,
    Request,
    Sampling,
    ScriptedEngine,
    call_all,
    make_row,
    seed_value,
)
from phi4ray.data.synth.plurality import PluralityConfig
from phi4ray.data.synth.qa import QAConfig
from phi4ray.data.synth.reversal import ReversalConfig
from phi4ray.data.synth.revise import ReviseConfig
from phi4ray.data.synth.rewrite import SCHEMA as REWRITE_SCHEMA
from phi4ray.data.synth.rewrite import RewriteConfig
from phi4ray.data.synth.templates import TemplateError, available_templates, load_template, strip_label, template_digests
from phi4ray.run.errors import ConfigError
from phi4ray.serve.endpoint import EndpointConfig, OpenAIEndpoint

TEMPLATES = ["agents_referee", "agents_solver_a", "agents_solver_b", "answer", "code_to_instruction", "critique",
             "instruction_to_code", "qa_extract", "respond", "revise", "rewrite_discussion", "rewrite_exercise",
             "rewrite_reasoning"]


# --- templates -------------------------------------------------------------------------------------
def test_every_packaged_template_loads_with_its_id_and_version():
    assert set(TEMPLATES) <= set(available_templates())
    for name in TEMPLATES:
        t = load_template(name)
        assert (t.id, t.template_id) == (name, f"{name}@{t.version}")
        assert t.purpose and t.fields, name
        text = t.render(**{f: f"<{f}>" for f in t.fields})
        assert all(f"<{f}>" in text for f in t.fields) and "{{" not in text


def test_render_fills_once_and_fails_clearly_on_a_missing_or_unknown_field():
    t = load_template("answer")
    text = t.render(question=r"Is {question} \frac{1}{2}?")
    assert r"Is {question} \frac{1}{2}?" in text  # a value's braces are never placeholders
    assert r"\boxed{answer}" in text  # the template's doubled braces come out single
    with pytest.raises(TemplateError, match=r"answer@2: missing field\(s\) \['question'\]"):
        t.render()
    with pytest.raises(TemplateError, match=r"unknown field\(s\) \['questoin'\]"):
        t.render(question="q", questoin="typo")


def test_digests_change_with_the_wording_and_not_otherwise(tmp_path):
    body = "id: t\nversion: 1\npurpose: p\n---\nSay {x}.\n"
    (tmp_path / "t.txt").write_text(body)
    first = template_digests(directory=str(tmp_path))
    (tmp_path / "t.txt").write_text(body.replace("purpose: p", "purpose: other"))
    load_template.cache_clear()
    assert template_digests(directory=str(tmp_path)) == first  # the header is not wording
    (tmp_path / "t.txt").write_text(body.replace("Say", "Shout"))
    load_template.cache_clear()
    second = template_digests(directory=str(tmp_path))
    assert list(second) == ["t@1"] and second != first
    # the answer's form is part of what was asked: a changed output regex changes the digest
    (tmp_path / "t.txt").write_text(body.replace("Say", "Shout").replace("---", "output: [a-z]+\n---"))
    load_template.cache_clear()
    third = template_digests(directory=str(tmp_path))
    assert list(third) == ["t@1"] and third != second
    assert set(template_digests()) == {f"{n}@{load_template(n).version}" for n in available_templates()}


@pytest.mark.parametrize("text, problem", [
    ("id: t\nversion: 1\npurpose: p\nbody {x}\n", "no '---' line"),
    ("id: other\nversion: 1\npurpose: p\n---\nbody\n", "differs from the file name"),
    ("id: t\nversion: one\npurpose: p\n---\nbody\n", "version must be a positive integer"),
    ("id: t\nversion: 1\n---\nbody\n", "header lacks"),
    ("id: t\nversion: 1\npurpose: p\n---\nline\n\\frac{1}{2}\n", "stray '{' on body line 2"),
])
def test_malformed_template_files_fail_naming_the_problem(tmp_path, text, problem):
    (tmp_path / "t.txt").write_text(text)
    with pytest.raises(TemplateError, match=problem):
        load_template("t", str(tmp_path))


def test_unknown_or_unsafe_template_names_are_refused():
    with pytest.raises(TemplateError, match="no template 'nope'"):
        load_template("nope")
    with pytest.raises(TemplateError, match="must match"):
        load_template("../llm")


def test_strip_label_drops_an_echoed_answer_label_only():
    assert strip_label("**Instruction:**\nWrite f.", "Instruction") == "Write f."
    assert strip_label("  Revised response: 42", "Improved response", "Revised response") == "42"
    assert strip_label("Instructions matter: x", "Instruction") == "Instructions matter: x"


# --- call layer --------------------------------------------------------------------------------------
def run(coro):
    return asyncio.run(coro)


def echo(prompt: str) -> str:
    return f"re:{prompt}"


def test_call_all_batches_and_returns_one_outcome_per_request_in_order():
    eng = ScriptedEngine(echo, delay_s=0.001)
    reqs = [Request(f"p{i}", max_tokens=8 if i % 2 else 16) for i in range(11)]
    outs = run(call_all(eng, reqs, batch_size=3, concurrency=2, retries=0))
    assert [o.text for o in outs] == [f"re:p{i}" for i in range(11)]
    assert all(o.ok and o.attempts == 1 for o in outs)
    # two sampling groups (max_tokens 8: 5 prompts, 16: 6) -> batches of at most 3, never mixed
    assert sorted(len(c) for c in eng.calls) == [2, 3, 3, 3]
    for call in eng.calls:
        assert len({int(p[1:]) % 2 for p in call}) == 1


def test_call_all_respects_the_concurrency_bound():
    eng = ScriptedEngine(echo, delay_s=0.01)
    outs = run(call_all(eng, [Request(f"p{i}") for i in range(24)], batch_size=2, concurrency=3, retries=0))
    assert all(o.ok for o in outs) and len(eng.calls) == 12
    assert eng.max_in_flight == 3  # bounded, and the bound is used


def test_transient_failure_is_retried_until_it_succeeds():
    eng = ScriptedEngine(echo, fail=lambda p, attempt: p == "flaky" and attempt < 2)
    outs = run(call_all(eng, [Request("a"), Request("flaky"), Request("b")], batch_size=3, retries=2, backoff_s=0))
    assert [o.text for o in outs] == ["re:a", "re:flaky", "re:b"]
    assert [o.attempts for o in outs] == [2, 3, 2]  # batch attempt, then each alone; flaky needed 2 more
    assert eng.seen == {"a": 2, "flaky": 3, "b": 2}


def test_permanent_failure_becomes_an_outcome_with_a_reason_and_spares_the_rest():
    eng = ScriptedEngine(echo, fail=lambda p, attempt: p == "poison")
    reqs = [Request("a"), Request("poison"), Request("b"), Request("c")]
    outs = run(call_all(eng, reqs, batch_size=4, retries=2, backoff_s=0))
    assert [o.ok for o in outs] == [True, False, True, True]
    bad = outs[1]
    assert bad.texts is None and bad.attempts == 3
    assert bad.error.startswith("llm_error: RuntimeError: scripted failure")
    assert eng.seen["poison"] == 3 and eng.seen["a"] == 2  # batch-mates retried alone once, not thrice


class PartialEngine:
    """Fails one prompt in its slot (as EndpointEngine does), answers the rest."""

    def __init__(self):
        self.calls = 0

    async def generate(self, prompts, *, n, max_tokens, temperature):
        self.calls += 1
        return [ValueError("too long") if p == "long" else [p.upper()] * n for p in prompts]


def test_a_failure_in_one_slot_fails_that_request_alone():
    eng = PartialEngine()
    outs = run(call_all(eng, [Request("x", n=2), Request("long", n=2), Request("y", n=2)], retries=1, backoff_s=0))
    assert outs[0].texts == ("X", "X") and outs[2].texts == ("Y", "Y")
    assert outs[1].error == "llm_error: ValueError: too long" and outs[1].attempts == 2
    assert eng.calls == 2  # the batch once, then only the failed prompt again


class WrongShapeEngine:
    async def generate(self, prompts, *, n, max_tokens, temperature):
        return [["only one"]] * (len(prompts) - 1)


class HangingEngine:
    async def generate(self, prompts, *, n, max_tokens, temperature):
        await asyncio.sleep(30)


class FinalError(RuntimeError):
    retryable = False  # as phi4ray.serve.endpoint.EndpointError says of a 400


class FinalEngine:
    """'bad' fails with a final error: in its own slot (`slots`), or by failing the whole call."""

    def __init__(self, slots: bool):
        self.slots, self.calls = slots, []

    async def generate(self, prompts, *, n, max_tokens, temperature):
        self.calls.append(list(prompts))
        if not self.slots and "bad" in prompts:
            raise FinalError("rejected")
        return [FinalError("rejected") if p == "bad" else [p] * n for p in prompts]


def test_a_final_error_is_not_retried_unless_a_batch_mate_may_have_caused_it():
    eng = FinalEngine(slots=True)
    outs = run(call_all(eng, [Request("a"), Request("bad")], retries=2, backoff_s=0))
    assert outs[0].text == "a" and outs[1].error == "llm_error: FinalError: rejected" and outs[1].attempts == 1
    assert eng.calls == [["a", "bad"]]  # its own error said final: no retry
    eng = FinalEngine(slots=False)
    outs = run(call_all(eng, [Request("a"), Request("bad")], retries=2, backoff_s=0))
    assert outs[0].text == "a" and outs[0].attempts == 2  # the batch's failure was not a's: a retried alone
    assert outs[1].error == "llm_error: FinalError: rejected" and outs[1].attempts == 2  # alone once, then final
    assert sorted(map(tuple, eng.calls)) == [("a",), ("a", "bad"), ("bad",)]


def test_malformed_replies_and_hung_calls_become_reasons():
    outs = run(call_all(WrongShapeEngine(), [Request("a"), Request("b")], retries=0))
    assert all(o.error == "llm_error: ValueError: engine returned 1 replies for 2 prompts" for o in outs)
    outs = run(call_all(ScriptedEngine(lambda p: ["one"]), [Request("a", n=2)], retries=0))
    assert "expected 2 strings" in outs[0].error
    outs = run(call_all(HangingEngine(), [Request("a")], retries=1, backoff_s=0, timeout_s=0.05))
    assert outs[0].error == "llm_error: TimeoutError" and outs[0].attempts == 2


def test_call_all_validates_its_settings_and_empty_input():
    assert run(call_all(ScriptedEngine(echo), [])) == []
    with pytest.raises(ConfigError, match="CallConfig.concurrency must be >= 1, got 0"):
        run(call_all(ScriptedEngine(echo), [Request("a")], concurrency=0))
    assert run(call_all(ScriptedEngine(echo), ["not a request"]))[0].error.startswith("bad_request")


# --- endpoint engine ---------------------------------------------------------------------------------
def endpoint_engine(mode: str, seen: list) -> EndpointEngine:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, body))
        text = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        if text == "bad":
            return httpx.Response(400, json={"error": {"message": "prompt too long"}})
        # choices deliberately out of order: the engine must sort them by index
        idx = list(range(body["n"]))[::-1]
        if "messages" in body:
            choices = [{"index": i, "message": {"role": "assistant", "content": f"{text}#{i}"}} for i in idx]
        else:
            choices = [{"index": i, "text": f"{text}#{i}"} for i in idx]
        return httpx.Response(200, json={"choices": choices})

    ep = OpenAIEndpoint(EndpointConfig(base_url="http://teacher.test/v1", model="teacher", max_retries=0))
    ep._client = httpx.AsyncClient(base_url="http://teacher.test/v1", transport=httpx.MockTransport(handler))
    return EndpointEngine(ep, mode=mode, system="be brief" if mode == "chat" else None)


@pytest.mark.parametrize("mode, path", [("chat", "/v1/chat/completions"), ("completions", "/v1/completions")])
def test_endpoint_engine_maps_prompts_to_requests_and_isolates_a_bad_prompt(mode, path):
    seen: list = []
    eng = endpoint_engine(mode, seen)
    outs = run(call_all(eng, [Request("q1", n=2, max_tokens=7, temperature=0.1), Request("bad", n=2, max_tokens=7,
                              temperature=0.1)], retries=0))
    assert outs[0].texts == ("q1#0", "q1#1")
    assert outs[1].error.startswith("llm_error: EndpointError") and "HTTP 400: prompt too long" in outs[1].error
    assert {p for p, _ in seen} == {path}
    body = next(b for _, b in seen if "q1" in json.dumps(b))
    assert (body["n"], body["max_tokens"], body["temperature"], body["model"]) == (2, 7, 0.1, "teacher")
    if mode == "chat":
        assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q1"}]
    with pytest.raises(ConfigError, match="EndpointEngine.mode"):
        EndpointEngine(eng.endpoint, mode="embeddings")


# --- configs and rows --------------------------------------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda: CallConfig(retries=-1), "CallConfig.retries must be >= 0, got -1"),
    (lambda: CallConfig(backoff_s=2, backoff_max_s=1), "CallConfig.backoff_max_s must be >= backoff_s, got 1"),
    (lambda: Sampling(temperature=3), r"Sampling.temperature must be in \[0, 2\], got 3"),
    (lambda: Sampling(max_tokens=0), "Sampling.max_tokens must be >= 1, got 0"),
    (lambda: RewriteConfig(kinds=("exercise", "poem")), "RewriteConfig.kinds must be"),
    (lambda: RewriteConfig(max_copy_overlap=0), "RewriteConfig.max_copy_overlap must be in"),
    (lambda: ReviseConfig(threshold=11), r"ReviseConfig.threshold must be in \[1, 10\], got 11"),
    (lambda: ReviseConfig(max_rounds=-1), "ReviseConfig.max_rounds must be >= 0"),
    (lambda: ReversalConfig(threshold=1.5), "ReversalConfig.threshold must be in"),
    (lambda: QAConfig(max_pairs=0), "QAConfig.max_pairs must be >= 1"),
    (lambda: PluralityConfig(n_answers=1), "PluralityConfig.n_answers must be >= 2"),
    (lambda: PluralityConfig(min_share=1.0), "PluralityConfig.min_share must be in"),
])
def test_configs_validate_naming_the_field_and_value(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_rows_have_exactly_the_schema_and_bad_seeds_say_why():
    row = make_row(REWRITE_SCHEMA, seed_id="s", status="ok")
    assert list(row) == REWRITE_SCHEMA.names and row["text"] is None
    with pytest.raises(KeyError, match="not in the schema"):
        make_row(REWRITE_SCHEMA, seed_id="s", colour="red")
    assert seed_value({"seed_id": 3, "text": "t"}, "text") == ("3", "t", None)
    assert seed_value({"seed_id": "s", "text": "  "}, "text") == ("s", None, "bad_seed: no text")
    assert seed_value({"text": "t"}, "text") == ("", None, "bad_seed: no seed_id")
    assert seed_value(["x"], "text") == ("", None, "bad_seed: list is not a dict")
    assert Outcome(None, "why").text == ""
