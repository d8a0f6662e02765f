"""LLM-judge data: parsing, position bias, pair selection, accounting; then the real fleet.

Unit tests drive phi4ray/posttrain/judge.py, the judged-data drivers (phi4ray/posttrain/judged_pairs.py,
phi4ray/posttrain/judged_sft.py), phi4ray/posttrain/judge_endpoint.py and actors/posttrain/judge.py with scripted async judges
and policies (and a loopback OpenAI-compatible server for the endpoint side). The integration tests run
responses (and once the judge) through the real Serve + vLLM fleet of the session fixtures.
"""
from __future__ import annotations

import asyncio
import json
import re
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

from actors.posttrain.judge import FleetJudge, FleetPolicy
from phi4ray.model.phi4_tokenizer import ENDOFTEXT, IM_END, phi4_tokenizer
from phi4ray.posttrain.judge import (
    JUDGE_TEMPLATE,
    Candidate,
    best_of_n,
    judge_pair,
    judge_prompt,
    parse_scores,
    parse_verdict,
    select_pair,
)
from phi4ray.posttrain.judge_endpoint import EndpointJudge, EndpointPolicy
from phi4ray.posttrain.judged_pairs import build_judged_pairs, pair_schema
from phi4ray.posttrain.judged_sft import best_of_n_sft
from phi4ray.serve.endpoint import EndpointConfig
from phi4ray.train.sft import read_conversations
from phi4ray.verify.oracles import MathOracle

PAIR_COLUMNS = ["pair_id", "query_id", "model_id", "prompt_ids", "chosen_ids", "rejected_ids", "prompt_text",
                "chosen_text", "rejected_text", "chosen_accuracy", "chosen_style", "chosen_detail",
                "rejected_accuracy", "rejected_style", "rejected_detail", "decided_by", "pairwise", "template_id"]


# --- scripted judges ---------------------------------------------------------------------------
def _between(text: str, tag: str) -> str:
    return re.search(rf"\[{tag}\]\n(.*?)\n\[End of {tag}\]", text, re.S).group(1)


def scores_text(acc, style, detail) -> str:
    return f"accuracy: {acc}\nstyle: {style}\ndetail: {detail}"


class ScriptedJudge:
    """Scores a response by `rate(response) -> (acc, style, detail)` or a raw string; answers a
    pair by comparing the rates (position-blind) unless `pair_answer(a, b)` says otherwise."""

    def __init__(self, rate, pair_answer=None):
        self.rate, self.pair_answer, self.calls, self.guides = rate, pair_answer, [], []

    async def __call__(self, text: str, guide: dict | None = None) -> str:
        self.calls.append(text)
        self.guides.append(guide)
        await asyncio.sleep(0)
        if text.startswith("You are comparing"):
            a, b = _between(text, "Response A"), _between(text, "Response B")
            if self.pair_answer:
                return self.pair_answer(a, b)
            ra, rb = self.rate(a), self.rate(b)
            better = "tie" if ra == rb else "A" if (ra[0], sum(ra)) > (rb[0], sum(rb)) else "B"
            return (f"A accuracy: {ra[0]}\nA style: {ra[1]}\nA detail: {ra[2]}\n"
                    f"B accuracy: {rb[0]}\nB style: {rb[1]}\nB detail: {rb[2]}\nbetter: {better}")
        r = self.rate(_between(text, "Response"))
        return r if isinstance(r, str) else scores_text(*r)


def by_table(table: dict):
    """Rate responses by a lookup on their text."""
    return lambda response: table[response]


def first_position(a, b):  # a judge with pure position bias: always prefers what it sees first
    return "better: A"


def cand(text, scores=None, model="m", ids=None, reason=None, correct=None):
    ids = phi4_tokenizer().encode_ordinary(text) + [IM_END] if ids is None else ids
    return Candidate(model, ids, text, "stop",
                     scores=scores, reason=reason, correct=correct)


def S(acc, style=5, detail=5):
    return {"accuracy": float(acc), "style": float(style), "detail": float(detail)}


# --- parsing -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("accuracy: 8\nstyle: 7\ndetail: 9", S(8, 7, 9)),
    ("Accuracy: 10\nStyle: 1\nDetail: 5", S(10, 1, 5)),
    ("**Accuracy**: 8/10\n- style = 7.\n### detail: 9.5", S(8, 7, 9.5)),
    ("Let me think. accuracy: 2 maybe?\naccuracy: 3\nstyle: 4\ndetail: 5\naccuracy: 6", S(6, 4, 5)),  # last wins
    ("  accuracy : 8 \r\nstyle:7\r\ndetail:9\r\n", S(8, 7, 9)),
    ("accuracy: 8\nstyle: 7", None),                         # a criterion missing
    ("accuracy: 11\nstyle: 7\ndetail: 9", None),             # out of range
    ("accuracy: 0\nstyle: 7\ndetail: 9", None),
    ("accuracy: N\nstyle: N\ndetail: N", None),              # the template echoed back
    ("accuracy: 8 out of 100\nstyle: 7\ndetail: 9", None),   # not the strict form
    ("accuracy: -3\nstyle: 7\ndetail: 9", None),
    ("", None), ("\x00\xff garbage <|im_end|> ::::", None), (None, None), (42, None), (["accuracy: 8"], None),
])
def test_parse_scores(text, want):
    assert parse_scores(text) == want


def test_parse_scores_is_fast_and_never_raises_on_junk():
    import random
    import time

    rng = random.Random(0)
    t0 = time.perf_counter()
    for _ in range(300):
        junk = "".join(rng.choice("accuracy style detail:=/*#- \n0123456789.\t") for _ in range(rng.randint(0, 400)))
        assert parse_scores(junk) is None or set(parse_scores(junk)) == {"accuracy", "style", "detail"}
        parse_verdict(junk)
    assert parse_scores("accuracy: 5" + " " * 100_000 + "x") is None
    assert time.perf_counter() - t0 < 2.0


def test_parse_verdict():
    full = "A accuracy: 8\nA style: 7\nA detail: 9\nB accuracy: 3\nB style: 2\nB detail: 1\nbetter: B"
    assert parse_verdict(full) == {"better": "B", "A": S(8, 7, 9), "B": S(3, 2, 1)}
    assert parse_verdict("Response A's accuracy: 8\n**Better**: Response a.") == {"better": "A", "A": None, "B": None}
    assert parse_verdict("better: TIE")["better"] == "tie"
    assert parse_verdict("A accuracy: 8\nbetter: C") is None
    assert parse_verdict("A is better") is None
    assert parse_verdict(None) is None


# --- position bias -----------------------------------------------------------------------------
def test_position_biased_judge_is_inconsistent():
    judge = ScriptedJudge(None, pair_answer=first_position)
    v = asyncio.run(judge_pair(judge, "q", "good answer", "bad answer"))
    assert (v.winner, v.status) == (None, "inconsistent")
    # both orders were shown: (a, b) and then (b, a)
    assert [_between(t, "Response A") for t in judge.calls] == ["good answer", "bad answer"]


def test_consistent_judge_agrees_and_ties_are_ties():
    rate = by_table({"good": (9, 8, 8), "bad": (2, 3, 3), "meh": (2, 3, 3)})
    for a, b, winner in (("good", "bad", "a"), ("bad", "good", "b")):
        v = asyncio.run(judge_pair(ScriptedJudge(rate), "q", a, b))
        assert (v.winner, v.status) == (winner, "agree")
    assert asyncio.run(judge_pair(ScriptedJudge(rate), "q", "bad", "meh")).status == "tie"
    junk = asyncio.run(judge_pair(ScriptedJudge(rate, pair_answer=lambda a, b: "no idea"), "q", "good", "bad"))
    assert (junk.winner, junk.status) == (None, "unparseable")


def test_position_bias_means_no_pair():
    rate = by_table({"good": (9, 8, 8), "bad": (2, 3, 3)})
    judge = ScriptedJudge(rate, pair_answer=first_position)
    o = asyncio.run(judge_prompt(judge, "q", [cand("bad"), cand("good")]))
    assert o.pair is None and o.reason == "position_inconsistent"
    assert o.pairwise.status == "inconsistent" and o.judge_calls == 4  # 2 single + 2 orders


# --- selection ---------------------------------------------------------------------------------
def test_select_pair_accuracy_first_then_overall():
    eloquent_wrong, terse_right, mid = cand("x", S(3, 10, 10)), cand("y", S(8, 2, 2)), cand("z", S(5, 5, 5))
    chosen, rejected = select_pair([eloquent_wrong, mid, terse_right])
    assert (chosen, rejected) == (terse_right, eloquent_wrong)
    # equal accuracy: overall decides
    better_style, worse_style = cand("a", S(7, 9, 8)), cand("b", S(7, 4, 4))
    assert select_pair([worse_style, better_style]) == (better_style, worse_style)


def test_select_pair_needs_a_clear_margin():
    a, b = cand("a", S(7, 5, 5)), cand("b", S(7, 5, 6))
    assert select_pair([a, b]) is None    # overall gap 1/3
    assert select_pair([a, b], min_overall_gap=0.3) == (b, a)
    a, b = cand("a", S(8, 5, 5)), cand("b", S(7, 5, 5))
    assert select_pair([b, a]) == (a, b)  # accuracy gap 1
    assert select_pair([a, b], min_accuracy_gap=2) is None
    # ineligible candidates never count, and one eligible candidate is no pair
    lone = [cand("a", S(9)), cand("b", None, reason="unparseable"), cand("c", S(1), reason="empty")]
    assert select_pair(lone) is None


def test_best_of_n():
    assert best_of_n([S(5, 9, 9), None, S(8, 1, 1), S(8, 2, 2)]) == 3
    assert best_of_n([S(8, 2, 2), S(8, 2, 2)]) == 0  # ties: the first
    assert best_of_n([None, None]) is None and best_of_n([]) is None


def test_oracle_decides_accuracy():
    # the judge is fooled: it rates the wrong, confident answer higher on everything
    rate = by_table({"The answer is \\boxed{5}.": (10, 10, 10), "So it is \\boxed{4}.": (3, 4, 4)})
    judge = ScriptedJudge(rate)
    wrong, right = cand("The answer is \\boxed{5}."), cand("So it is \\boxed{4}.")
    o = asyncio.run(judge_prompt(judge, "2+2?", [wrong, right], reference="4", oracle=MathOracle()))
    assert o.pair == (right, wrong) and o.decided_by == "oracle"
    assert (right.correct, wrong.correct) == (True, False)
    assert right.scores == S(10, 4, 4) and wrong.scores == S(1, 10, 10)  # style/detail stay the judge's
    assert o.judge_calls == 2 and o.pairwise is None  # an oracle verdict needs no pairwise check
    # without the oracle the judge's (wrong) preference would win
    o2 = asyncio.run(judge_prompt(ScriptedJudge(rate), "2+2?", [cand("The answer is \\boxed{5}."),
                                                                  cand("So it is \\boxed{4}.")]))
    assert o2.pair[0].text == "The answer is \\boxed{5}." and o2.decided_by == "judge"
    # both correct: accuracy ties and the judge's other criteria decide, confirmed pairwise
    a, b = cand("So it is \\boxed{4}."), cand("It is \\boxed{4}, because 2+2=4.")
    rate2 = by_table({a.text: (6, 3, 3), b.text: (6, 9, 9)})
    o3 = asyncio.run(judge_prompt(ScriptedJudge(rate2), "2+2?", [a, b], reference="4", oracle=MathOracle()))
    assert o3.pair == (b, a) and o3.decided_by == "judge" and o3.pairwise.status == "agree"


def test_failures_are_reasons():
    rate = by_table({"ok": (8, 8, 8), "ok2": (2, 2, 2), "junk": "I refuse to grade."})
    o = asyncio.run(judge_prompt(ScriptedJudge(rate), "q", [cand("junk"), cand("junk"), cand("ok")]))
    assert o.reason == "judge_unparseable" and o.parse_failures == 2
    assert all(c.judge_output == "I refuse to grade." for c in o.candidates[:2])
    o = asyncio.run(judge_prompt(ScriptedJudge(rate), "q", [cand("  ", ids=[IM_END]), cand("ok")]))
    assert o.reason == "empty_responses" and o.judge_calls == 1
    cut = Candidate("m", [5, 6], "ok2", "length")
    o = asyncio.run(judge_prompt(ScriptedJudge(rate), "q", [cut, cand("ok")]))
    assert o.reason == "truncated" and cut.reason == "truncated"
    cut = Candidate("m", [5, 6], "ok2", "length")  # candidates are scored in place: a fresh one
    o = asyncio.run(judge_prompt(ScriptedJudge(rate), "q", [cut, cand("ok")], keep_truncated=True))
    assert o.pair[1] is cut
    o = asyncio.run(judge_prompt(ScriptedJudge(rate), "q", [cand("ok")]))
    assert o.reason == "too_few_responses"
    same = [9, 9, IM_END]
    o = asyncio.run(judge_prompt(ScriptedJudge(by_table({"a": (9, 9, 9), "b": (1, 1, 1)})), "q",
                                 [cand("a", ids=same), cand("b", ids=same)]))
    assert o.reason == "identical"


# --- the driver, with scripted policies ---------------------------------------------------------
class ScriptedPolicy:
    """Answers from a table question -> list of texts; ids as the fleet would give them."""

    def __init__(self, model_id, answers, fail_on=()):
        self.model_id, self.answers, self.fail_on, self.calls = model_id, answers, set(fail_on), 0

    async def respond(self, prompt_ids, question, n=None):
        self.calls += 1
        if question in self.fail_on:
            raise ConnectionError("teacher unreachable")
        tok = phi4_tokenizer()
        return [Candidate(self.model_id, tok.encode_ordinary(t) + [IM_END] if t else [IM_END], t, "stop")
                for t in self.answers[question]]


def _scenario():
    rate = {"right": (9, 8, 8), "wrong": (2, 3, 3), "so-so": (5, 5, 5), "so-so too": (5, 5, 5),
            "babble": "accuracy: ???", "left": (9, 8, 8), "worse": (3, 3, 3), "x": (7, 7, 7), "y": (2, 2, 2)}
    a = {"pair": ["right"], "tie": ["so-so"], "junk": ["babble"], "empty": [""], "biased": ["left"], "down": ["x"]}
    b = {"pair": ["wrong"], "tie": ["so-so too"], "junk": ["babble"], "empty": ["right"], "biased": ["worse"],
         "down": ["y"]}
    biased_judge = {"left", "worse"}  # for this prompt the judge shows pure position bias

    def pair_answer(ra, rb):
        if {ra, rb} == biased_judge:
            return first_position(ra, rb)
        return None

    class Judge(ScriptedJudge):
        async def __call__(self, text, guide=None):
            if text.startswith("You are comparing") and pair_answer(_between(text, "Response A"),
                                                                    _between(text, "Response B")):
                self.calls.append(text)
                return "better: A"
            return await super().__call__(text)

    prompts = [{"id": f"q-{k}", "question": k} for k in a]
    return prompts, [ScriptedPolicy("teacher-a", a), ScriptedPolicy("teacher-b", b, fail_on={"down"})], \
        Judge(by_table(rate))


def test_build_judged_pairs_accounting_and_resume(tmp_path):
    prompts, policies, judge = _scenario()
    rep = build_judged_pairs(prompts, policies, judge, tmp_path, concurrency=3)
    assert rep["prompts_in"] == 6 == rep["pairs"] + sum(rep["no_pair"].values())
    assert rep["pairs"] == 1 and rep["acceptance_rate"] == pytest.approx(1 / 6)
    assert rep["no_pair"] == {"empty_responses": 1, "judge_unparseable": 1, "no_clear_winner": 1,
                              "position_inconsistent": 1, "error": 1}
    assert rep["parse_failures"] == 2 and rep["position_inconsistencies"] == 1
    assert rep["template_id"] == JUDGE_TEMPLATE.id
    assert json.loads((tmp_path / "report.json").read_text()) == rep

    t = pq.read_table(tmp_path / "pairs.parquet")
    assert t.column_names == PAIR_COLUMNS and t.schema == pair_schema()
    row = t.to_pylist()[0]
    tok = phi4_tokenizer()
    assert row["query_id"] == "q-pair" and row["model_id"] == "teacher-a>teacher-b"
    assert row["prompt_ids"] == phi4_tokenizer().render_prompt("pair")
    assert row["chosen_ids"] == tok.encode_ordinary("right") + [IM_END]  # endpoint-style ids end the turn
    assert row["rejected_ids"] == tok.encode_ordinary("wrong") + [IM_END]
    assert (row["chosen_text"], row["rejected_text"], row["chosen_accuracy"]) == ("right", "wrong", 9.0)
    assert row["pairwise"] == "agree" and row["template_id"] == JUDGE_TEMPLATE.id
    no_pair = [json.loads(x) for x in (tmp_path / "no_pair.jsonl").read_text().splitlines()]
    assert sorted(r["query_id"] for r in no_pair) == ["q-biased", "q-down", "q-empty", "q-junk", "q-tie"]
    assert {r["query_id"]: r["reason"] for r in no_pair}["q-down"] == "error"

    # resume: the five finished prompts are skipped; only the failed one is tried again
    calls_before = [p.calls for p in policies]
    policies[1].fail_on.clear()
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"query_id": "q-down", "status": "pa')  # a crash mid-write: a cut last line
    rep2 = build_judged_pairs(prompts, policies, judge, tmp_path, concurrency=3)
    assert [p.calls - c for p, c in zip(policies, calls_before)] == [1, 1]
    assert rep2["prompts_in"] == 6 and rep2["pairs"] == 2 and "error" not in rep2["no_pair"]
    assert rep2["pairs"] + sum(rep2["no_pair"].values()) == 6
    assert len(pq.read_table(tmp_path / "pairs.parquet")) == 2
    assert len((tmp_path / "no_pair.jsonl").read_text().splitlines()) == 4
    # and a finished run is a no-op; the retried prompt's line did not glue onto the cut one
    build_judged_pairs(prompts, policies, judge, tmp_path)
    assert [p.calls - c for p, c in zip(policies, calls_before)] == [1, 1]
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 7 and json.loads(lines[-1])["query_id"] == "q-down"


def test_duplicate_prompt_ids_are_refused(tmp_path):
    prompts, policies, judge = _scenario()
    with pytest.raises(ValueError, match="unique"):
        build_judged_pairs(prompts + prompts[:1], policies, judge, tmp_path)


def test_best_of_n_sft_feeds_read_conversations(tmp_path):
    answers = {"q1": ["meh", "great", "bad"], "q2": ["babble", "babble", "babble"]}
    rate = by_table({"meh": (5, 5, 5), "great": (9, 9, 8), "bad": (1, 2, 2), "babble": "??"})

    class Many(ScriptedPolicy):
        async def respond(self, prompt_ids, question, n=None):
            out = await super().respond(prompt_ids, question)
            assert len(out) == n
            return out

    out = tmp_path / "sft.jsonl"
    rep = best_of_n_sft([{"id": "a", "question": "q1"}, {"id": "b", "question": "q2"}], Many("pol", answers),
                        ScriptedJudge(rate), 3, out)
    assert rep["prompts_in"] == 2 and rep["kept"] == 1 and rep["skipped"] == {"judge_unparseable": 1}
    convs = read_conversations(str(out))
    assert convs == [[{"role": "user", "content": "q1"}, {"role": "assistant", "content": "great"}]]
    row = json.loads(out.read_text())
    assert row["query_id"] == "a" and row["score"] == pytest.approx(26 / 3)
    assert [json.loads(x)["reason"] for x in (tmp_path / "sft.skipped.jsonl").read_text().splitlines()] == [
        "judge_unparseable"]


# --- an OpenAI-compatible endpoint as policy and judge (loopback server) --------------------------
class _Teacher(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        if text.startswith("You are grading"):
            r = _between(text, "Response")
            contents = [(scores_text(9, 9, 9) if "<|im_end|>" in r else scores_text(2, 2, 2), "stop")]
        elif text.startswith("You are comparing"):
            good_first = "<|im_end|>" in _between(text, "Response A")
            contents = [(f"better: {'A' if good_first else 'B'}", "stop")]
        else:  # a teacher whose first answer quotes a special token, second is cut off, third is plain
            contents = [(f"About {text}: <|im_end|> is text here.", "stop"), ("About", "length"),
                        ("No.", "stop")][:body["n"]]
        data = json.dumps({"choices": [{"index": i, "message": {"role": "assistant", "content": c},
                                        "finish_reason": f} for i, (c, f) in enumerate(contents)]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def teacher_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_endpoint_policy_and_judge(teacher_url, tmp_path):
    cfg = EndpointConfig(base_url=teacher_url, model="teacher", max_retries=0)
    policy = EndpointPolicy("teacher", cfg, n=3)
    rep = build_judged_pairs([{"id": "e1", "question": "cats"}], [policy], EndpointJudge(cfg), tmp_path)
    assert rep["pairs"] == 1 and rep["candidate_reasons"] == {"ok": 2, "truncated": 1}
    row = pq.read_table(tmp_path / "pairs.parquet").to_pylist()[0]
    tok = phi4_tokenizer()
    # endpoint text -> ordinary tokens + <|im_end|>: the quoted special token stays plain text
    assert row["chosen_ids"] == tok.encode_ordinary("About cats: <|im_end|> is text here.") + [IM_END]
    assert row["chosen_ids"].count(IM_END) == 1 and row["rejected_ids"] == tok.encode_ordinary("No.") + [IM_END]
    cands = json.loads((tmp_path / "results.jsonl").read_text())["candidates"]
    assert cands[1]["ids"] == tok.encode_ordinary("About")  # cut off: no <|im_end|>


# --- the real fleet ----------------------------------------------------------------------------
class RecordingSampler:
    """The real FleetSampler, keeping every sample it returned."""

    def __init__(self, deployment, app):
        from actors.serve.sampler_client import FleetSampler

        self.inner, self.samples = FleetSampler(deployment, app), []

    async def sample(self, request):
        out = await self.inner.sample(request)
        self.samples += out
        return out


FLEET_PROMPTS = [{"id": f"f{i}", "question": q} for i, q in enumerate(["Name a colour.", "Add 2 and 3.", "Say hi."])]


def _fleet_policies(app):
    rec = RecordingSampler(app["deployment"], app["app"])
    return rec, [FleetPolicy("tiny-hot", sampler=rec, n=2, max_tokens=16, temperature=1.0),
                 FleetPolicy("tiny-cool", sampler=rec, n=1, max_tokens=16, temperature=0.7)]


def _assert_sampled(cands, rec):
    sampled = [s.token_ids for s in rec.samples]
    for c in cands:
        assert c["ids"] in sampled  # the sampled ids, exactly: never decoded and re-encoded
        # a response stopped on <|im_end|> (the stop id) or <|endoftext|> (the model's other EOS)
        # and ends with it; any other ran into max_tokens=16
        stopped = c["ids"][-1:] in ([IM_END], [ENDOFTEXT])
        assert c["finish_reason"] == ("stop" if stopped else "length"), c
        assert len(c["ids"]) <= 16 if stopped else len(c["ids"]) == 16, c


@pytest.mark.vllm
@pytest.mark.ray
def test_fleet_judge_gibberish_is_recorded(sampler_app, tmp_path):
    rec, policies = _fleet_policies(sampler_app)
    judge = FleetJudge(sampler_app["deployment"], sampler_app["app"], max_tokens=16)
    rep = build_judged_pairs(FLEET_PROMPTS, policies, judge, tmp_path, concurrency=3, keep_truncated=True)
    # a random model cannot answer "accuracy: N": every prompt is recorded, none silently lost
    assert rep["prompts_in"] == 3 == rep["pairs"] + sum(rep["no_pair"].values())
    assert rep["pairs"] == 0 and rep["no_pair"].get("judge_unparseable", 0) >= 2
    judged = rep["candidate_reasons"].get("unparseable", 0)
    assert rep["parse_failures"] == judged == rep["judge_calls"] and judged >= 8
    assert len(pq.read_table(tmp_path / "pairs.parquet")) == 0
    assert len((tmp_path / "no_pair.jsonl").read_text().splitlines()) == 3
    results = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(r["query_id"] for r in results) == ["f0", "f1", "f2"]
    cands = [c for r in results for c in r["candidates"]]
    assert len(cands) == 9 and len(rec.samples) == 9
    _assert_sampled(cands, rec)
    assert all(c["judge_output"] is not None for c in cands if c["reason"] == "unparseable")


@pytest.mark.vllm
@pytest.mark.ray
def test_fleet_responses_scripted_judge_write_pairs(sampler_app, tmp_path):
    rec, policies = _fleet_policies(sampler_app)
    # a deterministic, position-blind judge over gibberish: scores from a hash of the text
    judge = ScriptedJudge(lambda r: (1 + zlib.crc32(r.encode()) % 10, 1 + zlib.crc32(r.encode()) % 7, 5))
    rep = build_judged_pairs(FLEET_PROMPTS, policies, judge, tmp_path, concurrency=3, keep_truncated=True)
    assert rep["prompts_in"] == 3 == rep["pairs"] + sum(rep["no_pair"].values())
    assert rep["pairs"] >= 1 and rep["position_inconsistencies"] == 0
    t = pq.read_table(tmp_path / "pairs.parquet")
    assert t.column_names == PAIR_COLUMNS
    sampled = [s.token_ids for s in rec.samples]
    tok = phi4_tokenizer()
    for row in t.to_pylist():
        assert row["chosen_ids"] in sampled and row["rejected_ids"] in sampled
        assert row["chosen_ids"] != row["rejected_ids"]
        q = next(p for p in FLEET_PROMPTS if p["id"] == row["query_id"])
        assert row["prompt_ids"] == phi4_tokenizer().render_prompt(q["question"])
        assert row["chosen_text"] == tok.decode([i for i in row["chosen_ids"] if i != IM_END])
        assert row["chosen_accuracy"] >= row["rejected_accuracy"]
    results = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    _assert_sampled([c for r in results for c in r["candidates"]], rec)
    # resumable: a rerun samples nothing and writes the same pairs
    n_samples = len(rec.samples)
    build_judged_pairs(FLEET_PROMPTS, policies, judge, tmp_path, concurrency=3, keep_truncated=True)
    assert len(rec.samples) == n_samples
    assert pq.read_table(tmp_path / "pairs.parquet").equals(t)
