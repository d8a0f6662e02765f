"""Structured output: guides (phi4ray.serve.guide) from the templates and the judge through call_all
to the engines, and the real vLLM fleet holding its answers to them (token path and HTTP)."""
import asyncio
import re

import pytest

from phi4ray.data.synth.agents import parse_referee
from phi4ray.data.synth.llm import CallConfig, Request, Sampling, ScriptedEngine, call_all
from phi4ray.data.synth.plurality import plurality_filter
from phi4ray.data.synth.qa import parse_qa_pairs
from phi4ray.data.synth.revise import parse_critique
from phi4ray.data.synth.rewrite import RewriteConfig, check_rewrite
from phi4ray.data.synth.templates import TemplateError, load_template, parse_template, strip_label
from phi4ray.posttrain.judge import JUDGE_TEMPLATE, parse_scores, parse_verdict
from phi4ray.serve.guide import check_guide, endpoint_body
from phi4ray.serve.request_limits import SamplingError
from phi4ray.serve.sampling import SampleRequest
from phi4ray.verify.oracles import extract_answer

# an answer of each guided template's form, as a model held to it writes one, and what its step reads of it
ANSWERS = {
    "critique": ("feedback: step 2 skips the unit conversion\nreasoning: 7\nfactual_accuracy: 10",
                 lambda t: parse_critique(t) == {"reasoning": 7, "factual_accuracy": 10}),
    "qa_extract": ("Question: When does the mill turn?\nReasoning: it turns when the river is high; the river is "
                   "high after rain\nAnswer: after the spring rains\n\nQuestion: What makes the river high?\n"
                   "Reasoning: the passage says so\nAnswer: spring rain",
                   lambda t: [p.answer for p in parse_qa_pairs(t)] == ["after the spring rains", "spring rain"]),
    "answer": ("12 apples minus 5 eaten leaves 7.\nSo the answer is\n\\boxed{7}", lambda t: extract_answer(t) == "7"),
    "agents_solver_a": ("3 rows of 4 chairs: 3 * 4 = 12.\n\\boxed{12}", lambda t: extract_answer(t) == "12"),
    "agents_solver_b": ("Estimate: about 10. Exactly: 4 + 4 + 4 = 12, near the estimate.\n\\boxed{12}",
                        lambda t: extract_answer(t) == "12"),
    "agents_referee": ("Differences: B adds 3 + 4 where A multiplies\nCorrect: A\nSolution:\n3 rows of 4 chairs: "
                       "3 * 4 = 12.\n\\boxed{12}",
                       lambda t: (parse_referee(t).verdict, extract_answer(parse_referee(t).solution)) == ("a", "12")),
    "code_to_instruction": ("Instruction:\nWrite a function clamp(x, lo, hi) that returns x limited to [lo, hi].",
                            lambda t: strip_label(t, "Instruction").startswith("Write a function clamp")),
    "instruction_to_code": ("```python\ndef clamp(x, lo, hi):\n    return max(lo, min(x, hi))\n```",
                            lambda t: "def clamp" in t),
    "rewrite_exercise": ("Exercise:\nA mill on a river turns only while the water stands high, and the water "
                         "stands high for a week after each spring rain. It rained on Monday. Does the mill turn "
                         "on Friday?\n\nSolution:\nFriday falls four days after Monday, within the week of high "
                         "water that follows the rain.\nSo yes: the mill turns on Friday.",
                         lambda t: check_rewrite("exercise", t, "an unrelated seed", RewriteConfig(min_words=5))[0] == "ok"),
    "rewrite_reasoning": ("Problem:\nA mill turns 3 times an hour while the river is high, for 4 hours. How many "
                          "turns?\n\nSolution:\nStep 1: 3 turns an hour.\nStep 2: 3 * 4 = 12.\nFinal answer: \\boxed{12}",
                          lambda t: check_rewrite("reasoning", t, "an unrelated seed", RewriteConfig(min_words=5))[1] == "12"),
}


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_each_guided_template_form_is_what_its_step_parses(name):
    """A template's output regex and its step's parser agree: an answer of the form parses, and the
    guide is exactly that regex."""
    t = load_template(name)
    text, parses = ANSWERS[name]
    assert t.guide == {"regex": t.output} and re.fullmatch(t.output, text), name
    assert parses(text), name


def test_judge_forms_are_what_the_judge_parses():
    single = "accuracy: 9\nstyle: 7\ndetail: 10"
    pair = "".join(f"{s} {c}: 5\n" for s in "AB" for c in ("accuracy", "style", "detail")) + "better: tie"
    assert re.fullmatch(JUDGE_TEMPLATE.guide("single")["regex"], single)
    assert parse_scores(single) == {"accuracy": 9, "style": 7, "detail": 10}
    assert re.fullmatch(JUDGE_TEMPLATE.guide("pair")["regex"], pair)
    assert parse_verdict(pair)["better"] == "tie"
    assert not re.fullmatch(JUDGE_TEMPLATE.guide("single")["regex"], "accuracy: 11\nstyle: 7\ndetail: 10")


def test_a_template_output_must_be_a_regex():
    with pytest.raises(TemplateError, match="output is not a regex"):
        parse_template("id: t\nversion: 1\npurpose: p\noutput: (unclosed\n---\nSay {x}.\n", "t")
    with pytest.raises(TemplateError, match="bad header line"):
        parse_template("id: t\nversion: 1\npurpose: p\nshape: x\n---\nSay {x}.\n", "t")


@pytest.mark.parametrize("guide, problem", [
    ({"regex": "(unclosed"}, "does not compile"),
    ({"choice": []}, "non-empty list"),
    ({"json": "not a schema"}, "JSON schema object"),
    ({"regex": "a", "choice": ["a"]}, "must be one of"),
    ({"grammar": "root ::= x"}, "must be one of"),
])
def test_a_bad_guide_is_refused_naming_the_problem(guide, problem):
    with pytest.raises(SamplingError, match=problem):
        check_guide(guide)
    with pytest.raises(SamplingError, match=problem):
        SampleRequest(prompt_ids=[1, 2], guide=guide).validate()


def test_endpoint_body_speaks_openai_for_json_and_vllm_for_the_rest():
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}}
    assert endpoint_body({"json": schema}) == {
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}
    assert endpoint_body({"regex": "a|b"}) == {"structured_outputs": {"regex": "a|b"}}
    assert endpoint_body({"choice": ("A", "B")}) == {"structured_outputs": {"choice": ["A", "B"]}}
    assert endpoint_body(None) == {}


def test_call_all_sends_each_guide_with_its_own_call_and_none_when_unstructured():
    engine = ScriptedEngine(lambda p: "A")
    s = Sampling(8, 0.0)
    reqs = [Request.of("p1", s, guide={"choice": ["A", "B"]}), Request.of("p2", s, guide={"regex": "[AB]"}),
            Request.of("p3", s, guide={"choice": ["A", "B"]}), Request.of("p4", s)]
    outs = asyncio.run(call_all(engine, reqs, batch_size=8))
    assert all(o.ok for o in outs)
    sent = {tuple(c): g for c, g in zip(engine.calls, engine.guides)}
    # requests with the same guide share a call; another guide, or none, is another call
    assert sent == {("p1", "p3"): {"choice": ["A", "B"]}, ("p2",): {"regex": "[AB]"}, ("p4",): None}
    plain = ScriptedEngine(lambda p: "A")
    asyncio.run(call_all(plain, reqs, batch_size=8, structured=False))
    assert plain.guides == [None] and plain.calls == [["p1", "p2", "p3", "p4"]]
    assert CallConfig(structured=False).kwargs()["structured"] is False


def test_plurality_reads_the_guided_answer_form():
    answers = ["3 + 4 = 7\n\\boxed{7}", "so\n\\boxed{7}", "\\boxed{8}"]
    assert all(re.fullmatch(load_template("answer").output, a) for a in answers)
    assert plurality_filter("3 + 4?", None, answers, min_share=0.5).majority_answer == "7"


# --- the real fleet --------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.vllm
def test_the_fleet_holds_answers_to_their_guides(sampler_app):
    """The tiny random model writes noise unguided; guided, on the real Serve + vLLM fleet, its
    answers match the judge's forms (and so parse), a choice and a regex, on the token path
    (FleetEngine, FleetJudge) and over HTTP (EndpointEngine on the same fleet's OpenAI route)."""
    # deferred: the actors modules load Ray, which only these tests (marked ray) may pay for
    from actors.posttrain.judge import FleetJudge
    from actors.serve.fleet_engine import FleetEngine
    from phi4ray.data.synth.llm import EndpointEngine
    from phi4ray.serve.endpoint import EndpointConfig, OpenAIEndpoint

    judge = FleetJudge(sampler_app["deployment"], sampler_app["app"], max_tokens=64, model_dir=sampler_app["folder"])
    prompt = JUDGE_TEMPLATE.single.format(prompt="2 + 2?", response="4")

    async def judged():
        return await asyncio.gather(judge(prompt, guide=JUDGE_TEMPLATE.guide("single")), judge(prompt))
    guided, free = asyncio.run(judged())
    assert re.fullmatch(JUDGE_TEMPLATE.single_output, guided) and parse_scores(guided) is not None
    assert parse_scores(free) is None  # what the same judge writes without its guide

    pair = JUDGE_TEMPLATE.pair.format(prompt="2 + 2?", response_a="4", response_b="5")
    verdict = asyncio.run(judge(pair, guide=JUDGE_TEMPLATE.guide("pair")))
    assert parse_verdict(verdict)["better"] in ("A", "B", "tie")

    fleet = FleetEngine(sampler_app["deployment"], sampler_app["app"], seed=3, model_dir=sampler_app["folder"])
    endpoint = EndpointEngine(OpenAIEndpoint(EndpointConfig(sampler_app["url"] + "/v1", sampler_app["model_id"],
                                                            api_key_env="PHI4RAY_TEST_API_KEY", timeout_s=120)))
    for engine in (fleet, endpoint):
        reqs = [Request("Pick one.", n=3, max_tokens=8, temperature=1.0, guide={"choice": ["red", "green", "blue"]}),
                Request("Say yes.", n=2, max_tokens=12, temperature=1.0, guide={"regex": "(yes|no), [0-9]{2}"})]
        choice, rx = asyncio.run(call_all(engine, reqs, retries=0))
        assert choice.ok and set(choice.texts) <= {"red", "green", "blue"}, (engine, choice)
        assert rx.ok and all(re.fullmatch("(yes|no), [0-9]{2}", t) for t in rx.texts), (engine, rx)


def test_the_step_report_counts_answers_in_the_asked_form():
    # deferred: outputs imports every step module; only this test needs the report
    from phi4ray.data.synth.outputs import step_report

    def rows(*statuses, **extra):
        return [{"seed_id": f"s{i}", "status": s, **extra} for i, s in enumerate(statuses)]
    seeds = [{"seed_id": f"s{i}", "text": "t"} for i in range(4)]
    rep = step_report("rewrite", seeds, rows("ok", "no_solution", "llm_error: Timeout", "bad_seed: no text"), 1, 1)
    assert (rep["answers_read"], rep["parse_rate"]) == (2, 0.5)  # failures before any answer are not read
    qa = [{"seed_id": "s0", "status": "ok"}, {"seed_id": "s0", "status": "duplicate_question"},
          {"seed_id": "s1", "status": "no_pairs"}, {"seed_id": "s2", "status": "llm_error: x"},
          {"seed_id": "s3", "status": "unsupported_answer: y"}]
    assert step_report("qa", seeds, qa, 1, 1)["parse_rate"] == round(2 / 3, 4)  # per seed answered
    plural = [{"seed_id": "s0", "status": "ok", "n_answers": 4, "n_parsed": 3},
              {"seed_id": "s1", "status": "no_consensus", "n_answers": 4, "n_parsed": 1},
              {"seed_id": "s2", "status": "llm_error: x"}, {"seed_id": "s3", "status": "too_easy", "n_answers": 4,
                                                               "n_parsed": 4}]
    assert step_report("plurality", [dict(s, question="q") for s in seeds], plural, 1, 1)["parse_rate"] == round(8 / 12, 4)


def test_an_endpoint_judge_sends_its_guide_unless_told_the_endpoint_takes_none():
    from phi4ray.posttrain.judge_endpoint import EndpointJudge

    class Client:
        def __init__(self):
            self.extras = []

        async def chat(self, messages, *, max_tokens, temperature, extra=None):
            self.extras.append(extra)
            return {"choices": [{"message": {"content": "accuracy: 9\nstyle: 9\ndetail: 9"}}]}

    for structured, sent in ((True, endpoint_body(JUDGE_TEMPLATE.guide("single"))), (False, None)):
        judge = EndpointJudge(config=None, structured=structured)
        judge._client = Client()
        assert parse_scores(asyncio.run(judge("rate", guide=JUDGE_TEMPLATE.guide("single")))) is not None
        assert judge._client.extras == [sent]
