r"""Synthesis steps on scripted engines: each filter rejects what it should, keeps what it should,
and every seed comes out as at least one row of the step's schema.

Rewrite (copy of the seed, no solution, no \boxed answer), self-revision (early stop, k rounds,
unparseable critiques, trace), Q&A extraction (parsing, unsupported answers, duplicates) and the
plurality filter (too easy, no consensus, semantic clustering, organic answer replaced).
"""
from __future__ import annotations

import asyncio
import json
import re

import pyarrow as pa
import pytest

from phi4ray.data.synth import plurality, qa, revise, rewrite
from phi4ray.data.synth.llm import CallConfig, ScriptedEngine
from phi4ray.data.synth.plurality import PluralityConfig, normalize_text, plurality_filter, plurality_step
from phi4ray.data.synth.qa import QAConfig, QAPair, parse_qa_pairs, qa_step, question_key, support_problem
from phi4ray.data.synth.revise import ReviseConfig, parse_critique, revise_step
from phi4ray.data.synth.rewrite import RewriteConfig, ngram_overlap, rewrite_step

FAST = CallConfig(retries=1, backoff_s=0, batch_size=4)


def run(coro):
    return asyncio.run(coro)


def between(prompt: str, tag: str) -> str:
    return re.search(rf"\[{tag}\]\n(.*?)\n\[End of {tag}\]", prompt, re.S).group(1)


def conforms(rows: list[dict], schema: pa.Schema) -> None:
    """Every row has exactly the schema's columns, with values of its types."""
    assert all(list(r) == schema.names for r in rows)
    pa.Table.from_pylist(rows, schema=schema)  # raises on a value of the wrong type


def seed_ids(rows):
    return sorted({r["seed_id"] for r in rows})


# --- rewrite -------------------------------------------------------------------------------------------
PASSAGE = ("A prime number is a natural number greater than one that has no positive divisors other than one "
           "and itself. Euclid proved that there are infinitely many primes by assuming a finite list, "
           "multiplying all of them together and adding one; the result is divisible by none of the listed primes.")
FILLER = ("We work through the idea carefully, checking every step against the definition before moving on. "
          "A divisor of a number leaves no remainder, so each candidate is tried in turn. "
          "Only candidates up to the square root are needed, since divisors come in pairs. ")


def rewrite_reply(prompt: str) -> str:
    passage = between(prompt, "Passage")
    kind = "exercise" if "new exercise" in prompt else "discussion" if "Student" in prompt else "reasoning"
    if passage.startswith("COPY"):
        return passage
    if passage.startswith("NOPARTS"):  # long, original, but missing what its kind promises
        return "Exercise:\nShow that 2, 3 and 5 are prime. " + FILLER
    return {"exercise": "Exercise:\nIs 91 prime?\n\nSolution:\n" + FILLER + "91 = 7 * 13, so it is not prime.",
            "discussion": "Student: Why add one?\nTeacher: " + FILLER,
            "reasoning": "Problem:\nHow many primes are below 20?\n\nSolution:\nStep 1: " + FILLER
                         + "Final answer: \\boxed{8}"}[kind]


def test_rewrite_keeps_good_rewrites_and_drops_copies_and_missing_parts():
    seeds = [{"seed_id": "good", "text": PASSAGE}, {"seed_id": "copy", "text": "COPY " + PASSAGE},
             {"seed_id": "noparts", "text": "NOPARTS " + PASSAGE}, {"seed_id": "fails", "text": "FAIL"},
             {"seed_id": "empty", "text": ""}]
    eng = ScriptedEngine(rewrite_reply, fail=lambda p, a: "[Passage]\nFAIL\n" in p)
    rows = run(rewrite_step(eng, seeds, call=FAST))
    conforms(rows, rewrite.SCHEMA)
    status = {(r["seed_id"], r["kind"]): r["status"] for r in rows}
    assert len(rows) == 15 and seed_ids(rows) == sorted(s["seed_id"] for s in seeds)
    assert all(status["good", k] == "ok" for k in ("exercise", "discussion", "reasoning"))
    assert all(status["copy", k] == "copy_of_seed" for k in ("exercise", "discussion", "reasoning"))
    assert status["noparts", "exercise"] == "no_solution" and status["noparts", "reasoning"] == "no_final_answer"
    assert status["noparts", "discussion"] == "ok"
    assert all(status["fails", k].startswith("llm_error: RuntimeError") for k in ("exercise", "discussion"))
    assert all(status["empty", k] == "bad_seed: no text" for k in ("exercise", "reasoning"))
    good = {r["kind"]: r for r in rows if r["seed_id"] == "good"}
    assert good["reasoning"]["answer"] == "8" and good["exercise"]["answer"] is None
    assert good["exercise"]["template_id"] == "rewrite_exercise@2" and good["exercise"]["copy_overlap"] < 0.1
    copied = next(r for r in rows if r["seed_id"] == "copy")
    assert copied["copy_overlap"] == 1.0 and copied["text"].startswith("COPY")


def test_copy_overlap_is_about_word_sequences_not_shared_vocabulary():
    assert ngram_overlap(PASSAGE, PASSAGE) == 1.0
    shuffled = " ".join(sorted(PASSAGE.split()))  # same words, new order
    assert ngram_overlap(shuffled, PASSAGE) < 0.1
    assert ngram_overlap("", PASSAGE) == 0.0
    rows = run(rewrite_step(ScriptedEngine(lambda p: "Student: hi\nTeacher: short."),
                            [{"seed_id": "s", "text": PASSAGE}], RewriteConfig(kinds=("discussion",)), FAST))
    assert [r["status"] for r in rows] == ["too_short"]


def test_degenerate_teacher_output_is_dropped_as_corrupt():
    """What an untrained or broken teacher writes: word salad and repetition loops. Long enough,
    not a copy, but the corpus's corruption rules see it (the tiny pipeline's own model writes such
    text); a fair math-heavy exercise passes them."""
    salad = ("plaintiffgis Fortress mdb scalerWarningENCH Wax grat>this italicInfrastructureimer[ind MongoClient "
             "lipid interestsHeavy rehearsal bridCACHE Query Inthings Buildsnels.Json UNIVERSsmith ragazzi "
             "hurts<TSource truck}}OG.ObjectMapperatte(details deltbuiltin mot guitarsantaKEY_tilesasta " * 2)
    loop = "Student: Why add one?\nTeacher: " + "Because the product is divisible by every prime. " * 12
    math = ("Exercise:\nSolve 3x + 7 = 22 and 2y - 4 = 10.\n\nSolution:\n3x = 15, x = 5; 2y = 14, y = 7; "
            "x + y = 12, x * y = 35, x - y = -2, 2x + 3y = 31, so the answers are x = 5 and y = 7, checked: "
            "3(5) + 7 = 22 and 2(7) - 4 = 10. " + FILLER)
    replies = {"exercise": math, "discussion": loop, "reasoning": salad}
    rows = run(rewrite_step(ScriptedEngine(lambda p: replies["exercise" if "new exercise" in p else "discussion"
                                                            if "Student" in p else "reasoning"]),
                            [{"seed_id": "s", "text": PASSAGE}], RewriteConfig(), FAST))
    status = {r["kind"]: r["status"] for r in rows}
    assert status["exercise"] == "ok"
    assert status["discussion"].startswith(("corrupt:dup_", "corrupt:top_")) and status["reasoning"].startswith("corrupt:")


# --- self-revision -------------------------------------------------------------------------------------
def reviser(scores_by_version, draft="answer v0"):
    """Responses are "answer vN"; a revision bumps N; the critique of version N is scores_by_version(N)
    (a (reasoning, factual) pair, or a string sent as is)."""
    def reply(prompt: str) -> str:
        if prompt.startswith("Complete the task"):
            return draft
        version = int(re.search(r"answer v(\d+)", between(prompt, "Response")).group(1))
        if prompt.startswith("You are reviewing"):
            s = scores_by_version(version)
            return s if isinstance(s, str) else f"reasoning: {s[0]}\nfactual_accuracy: {s[1]}\nfeedback: fix step 2"
        assert "fix step 2" in between(prompt, "Critique")
        return f"Revised response: answer v{version + 1}"
    return reply


def steps(row):
    return [e["step"] for e in json.loads(row["trace"])]


def test_revision_stops_as_soon_as_the_rubric_clears_the_threshold():
    eng = ScriptedEngine(reviser(lambda v: (9, 8) if v >= 1 else (6, 9)))
    (row,) = run(revise_step(eng, [{"seed_id": "t", "task": "Prove it."}], ReviseConfig(threshold=8, max_rounds=3),
                             FAST))
    conforms([row], revise.SCHEMA)
    assert (row["status"], row["rounds"], row["text"], row["draft"]) == ("ok", 1, "answer v1", "answer v0")
    assert (row["score_reasoning"], row["score_factual_accuracy"], row["min_score"]) == (9, 8, 8)
    assert steps(row) == ["generate", "critique", "revise", "critique"]
    assert row["template_id"] == "respond@1+critique@3+revise@1"
    trace = json.loads(row["trace"])
    assert trace[1]["scores"] == {"reasoning": 6, "factual_accuracy": 9} and trace[2]["text"] == "answer v1"


def test_revision_stops_after_k_rounds_and_keeps_the_trace():
    eng = ScriptedEngine(reviser(lambda v: (5, 5 + v)))
    (row,) = run(revise_step(eng, [{"seed_id": "t", "task": "Prove it.", "draft": "answer v0"}],
                             ReviseConfig(threshold=8, max_rounds=2), FAST))
    assert (row["status"], row["rounds"], row["text"], row["draft"]) == ("below_threshold", 2, "answer v2", "answer v0")
    assert steps(row) == ["draft", "critique", "revise", "critique", "revise", "critique"]
    assert (row["score_factual_accuracy"], row["min_score"]) == (7, 5)  # the final text's critique
    assert row["template_id"] == "critique@3+revise@1"
    assert not any(p.startswith("Complete the task") for call in eng.calls for p in call)  # the draft was used


def test_an_unparseable_critique_is_a_failed_round_with_its_reason():
    critiques = []

    def scores(version):  # the first critique is prose without scores, the next one (same text) clears
        critiques.append(version)
        return "Looks fine to me!" if len(critiques) == 1 else (9, 9)
    eng = ScriptedEngine(reviser(scores))
    rows = run(revise_step(eng, [{"seed_id": "a", "task": "Prove it."}], ReviseConfig(max_rounds=2), FAST))
    (row,) = rows
    assert (row["status"], row["rounds"], row["text"]) == ("ok", 1, "answer v0")
    trace = json.loads(row["trace"])
    assert [(e["step"], e.get("error")) for e in trace] == [("generate", None), ("critique", "unparseable_critique"),
                                                            ("critique", None)]
    never = ScriptedEngine(reviser(lambda v: "no scores here"))
    (row,) = run(revise_step(never, [{"seed_id": "b", "task": "Prove it."}], ReviseConfig(max_rounds=1), FAST))
    assert (row["status"], row["rounds"], row["min_score"]) == ("unparseable_critique", 1, None)
    assert steps(row) == ["generate", "critique", "critique"]


def test_revision_failures_and_bad_seeds_still_yield_rows():
    eng = ScriptedEngine(reviser(lambda v: (9, 9)), fail=lambda p, a: "BROKEN" in p)
    seeds = [{"seed_id": "ok", "task": "Prove it."}, {"seed_id": "broken", "task": "BROKEN"}, {"seed_id": "none"}]
    rows = run(revise_step(eng, seeds, call=FAST))
    conforms(rows, revise.SCHEMA)
    assert [(r["seed_id"], r["status"].split(":")[0]) for r in rows] == [
        ("ok", "ok"), ("broken", "llm_error"), ("none", "bad_seed")]
    assert steps(rows[1]) == ["generate"] and rows[2]["trace"] is None


@pytest.mark.parametrize("text, expected", [
    ("reasoning: 8\nfactual_accuracy: 7\nfeedback: ok", {"reasoning": 8, "factual_accuracy": 7}),
    ("Thinking...\n**Reasoning**: 8/10\n- Factual accuracy = 9.5\nfeedback: -", {"reasoning": 8, "factual_accuracy": 9.5}),
    ("reasoning: 3\nreasoning: 9\nfactual_accuracy: 9", {"reasoning": 9, "factual_accuracy": 9}),
    ("reasoning: 11\nfactual_accuracy: 9", None),
    ("reasoning: 8", None),
    (None, None),
])
def test_parse_critique_reads_the_rubric_strictly(text, expected):
    assert parse_critique(text) == expected


# --- Q&A extraction -----------------------------------------------------------------------------------
ORCHARD = ("The orchard has 12 apple trees and 8 pear trees. Each apple tree yields 40 kilograms of fruit per "
           "season. Frost in March destroys the blossoms of pear trees planted on the north slope.")


def test_parse_qa_pairs_reads_lenient_forms():
    text = ("Here are the pairs.\n\n1. **Question:** How many trees\nare there?\n**Reasoning:** 12 apple; 8 pear\n"
            "**Answer:** 20\n\n---\nQ: What yields 40 kg?\nA: Each apple tree.\n\nQuestion: Left unanswered?\n"
            "Answer:\n\nQuestion 4: Why?\nAnswer 4: Frost.\nAnswer: ignored second answer")
    assert parse_qa_pairs(text) == [QAPair("How many trees\nare there?", "12 apple; 8 pear", "20"),
                                    QAPair("What yields 40 kg?", "", "Each apple tree."),
                                    QAPair("Why?", "", "Frost.")]
    assert parse_qa_pairs(None) == [] and parse_qa_pairs("no pairs at all") == []


def qa_reply(prompt: str) -> str:
    passage = between(prompt, "Passage")
    if passage.startswith("Nothing"):
        return "This passage holds no deduction chain."
    return "\n\n".join([
        # supported: 480 is derived by a grounded chain
        "Question: How much apple fruit does the orchard yield per season?\n"
        "Reasoning: The orchard has 12 apple trees; each apple tree yields 40 kilograms; 12 * 40 = 480.\n"
        "Answer: 480 kilograms",
        # unsupported: a number nobody derived
        "Question: How many pear trees survive the frost?\nReasoning: Frost destroys pear blossoms.\nAnswer: 5",
        # duplicate of the first question, reworded
        "Question: Per season, how much apple fruit does the orchard yield?\n"
        "Reasoning: 12 apple trees times 40 kilograms is 480.\nAnswer: 480 kilograms",
        # unsupported: terms from nowhere, and a chain that is not grounded in the passage
        "Question: Who owns the orchard?\nReasoning: Orchards usually belong to cooperatives.\n"
        "Answer: A regional farming cooperative",
        # supported by the passage directly
        "Question: Which trees lose their blossoms in March?\n"
        "Reasoning: Frost in March destroys the blossoms of pear trees on the north slope.\n"
        "Answer: Pear trees on the north slope",
    ])


def test_qa_step_keeps_supported_pairs_and_drops_unsupported_and_duplicates():
    seeds = [{"seed_id": "orchard", "text": ORCHARD, "source": "book"}, {"seed_id": "empty", "text": "Nothing here."},
             {"seed_id": "bad", "text": None}]
    eng = ScriptedEngine(qa_reply)
    rows = run(qa_step(eng, seeds, QAConfig(max_pairs=5), FAST))
    conforms(rows, qa.SCHEMA)
    assert seed_ids(rows) == ["bad", "empty", "orchard"]
    orchard = [r for r in rows if r["seed_id"] == "orchard"]
    assert [r["pair_index"] for r in orchard] == [0, 1, 2, 3, 4]
    assert [r["status"].split(":")[0] for r in orchard] == ["ok", "unsupported_answer", "duplicate_question",
                                                            "unsupported_answer", "ok"]
    assert "number(s) 5 not in" in orchard[1]["status"]
    assert all(r["source"] == "book" and r["template_id"] == "qa_extract@2" for r in orchard)
    assert [r["status"] for r in rows if r["seed_id"] != "orchard"] == ["no_pairs", "bad_seed: no text"]
    assert "at most 5 pairs" in eng.calls[0][0]
    assert [r["status"] for r in run(qa_step(eng, seeds[:1], QAConfig(max_pairs=2), FAST))] == [
        "ok", "unsupported_answer: number(s) 5 not in the passage or reasoning", "over_max_pairs", "over_max_pairs",
        "over_max_pairs"]


def test_answer_support_uses_the_reasoning_only_when_it_is_grounded():
    cfg = QAConfig()
    derived = QAPair("Total trees?", "12 apple trees and 8 pear trees make 20 trees", "20")
    assert support_problem(derived, ORCHARD, cfg) is None
    ungrounded = QAPair("Total trees?", "Satellites counted twenty canopies overhead: 20", "20")
    assert support_problem(ungrounded, ORCHARD, cfg).startswith("unsupported_answer: number(s) 20")
    assert support_problem(QAPair("Yield?", "", "40,000 grams"), ORCHARD, cfg) is not None
    assert support_problem(QAPair("Yield per tree?", "", "40.0 kilograms"), ORCHARD, cfg) is None
    assert question_key("How many Trees are there?") == question_key("how many tree are there")


# --- plurality --------------------------------------------------------------------------------------
def boxed(*answers):
    return [f"Some work.\nSo the answer is \\boxed{{{a}}}." for a in answers]


def test_all_agree_is_too_easy_and_all_differ_is_no_consensus():
    easy = plurality_filter("q", None, boxed("1/2", "0.5", "\\frac{1}{2}", "\\dfrac12"))
    assert (easy.status, easy.cluster_sizes, easy.majority_share) == ("too_easy", (4,), 1.0)
    hard = plurality_filter("q", None, boxed("1", "2", "3", "4"))
    assert (hard.status, hard.cluster_sizes) == ("no_consensus", (1, 1, 1, 1))
    tie = plurality_filter("q", None, boxed("1", "1", "2", "2"), min_share=0.3)
    assert tie.status == "no_consensus"  # two equal largest clusters: no majority whatever the share
    assert plurality_filter("q", None, boxed("7")).status == "too_few_answers"
    # a small teacher copying the template's "\\boxed{answer}" casts no vote: 3 of 4 such samples
    # were the majority "answer" (SmolLM2, plurality on toy arithmetic); the copies count in N only
    copied = plurality_filter("What is 5 + 1 + 7?", "13", boxed("answer", "Answer", "13", "13"))
    assert copied.majority_answer == "13" and copied.cluster_sizes == (2,) and copied.status == "no_consensus"


def test_semantically_equal_answers_cluster_and_replace_a_disagreeing_organic_answer():
    answers = boxed("1/2", "0.5", "\\frac{1}{2}", "1/3", "2")
    res = plurality_filter("q", "0.75", answers)
    assert (res.status, res.cluster_sizes, res.majority_share) == ("ok", (3, 1, 1), 0.6)
    assert (res.answer, res.answer_source, res.majority_answer) == ("1/2", "majority_replaced_organic", "1/2")
    assert res.majority_solution == answers[0]
    kept = plurality_filter("q", "The solution ... \\boxed{0.50}", answers)
    assert (kept.answer, kept.answer_source) == ("0.50", "organic")
    missing = plurality_filter("q", "  ", answers)
    assert (missing.answer, missing.answer_source) == ("1/2", "majority")


def test_text_answers_cluster_by_normalised_text_and_unanswered_samples_count_against_agreement():
    res = plurality_filter("q", "Eiffel Tower", boxed("The Eiffel Tower", "eiffel tower.", "Louvre") + ["no answer"])
    assert (res.status, res.cluster_sizes, res.answer_source) == ("no_consensus", (2, 1), "organic")
    assert res.extracted[-1] is None and normalize_text("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_text("x+1.") == "x+1" and normalize_text("1.5, 2") == "1.5 2"  # math stays math
    res = plurality_filter("q", None, boxed("Paris", "paris", "PARIS") + ["I am not sure"])
    assert (res.status, res.majority_share) == ("ok", 0.75)  # one sample without an answer: not all agree


def test_plurality_step_samples_n_answers_per_question_and_keeps_every_seed():
    script = {"Q-easy": boxed("4", "4.0", "4", "4"), "Q-split": boxed("x+1", "1+x", "x+1", "x-1"),
              "Q-hard": boxed("1", "2", "3", "4")}
    eng = ScriptedEngine(lambda p: script[between(p, "Question")], fail=lambda p, a: "Q-down" in p)
    seeds = [{"seed_id": "e", "question": "Q-easy"}, {"seed_id": "s", "question": "Q-split", "answer": "x-1"},
             {"seed_id": "h", "question": "Q-hard"}, {"seed_id": "d", "question": "Q-down"}, {"seed_id": "n"}]
    rows = run(plurality_step(eng, seeds, n=4, call=FAST))
    conforms(rows, plurality.SCHEMA)
    by = {r["seed_id"]: r for r in rows}
    assert [r["seed_id"] for r in rows] == ["e", "s", "h", "d", "n"]
    assert by["e"]["status"] == "too_easy" and by["h"]["status"] == "no_consensus"
    assert (by["s"]["status"], by["s"]["answer"], by["s"]["answer_source"]) == ("ok", "x+1", "majority_replaced_organic")
    assert by["s"]["cluster_sizes"] == [3, 1] and by["s"]["n_answers"] == 4 and by["s"]["organic_answer"] == "x-1"
    assert by["d"]["status"].startswith("llm_error") and by["n"]["status"] == "bad_seed: no question"
    assert all(r["template_id"] == "answer@2" for r in rows)
    assert len(eng.calls[0]) == 4  # one batched call: one prompt per question, n samples each
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        run(plurality_step(eng, seeds, n=1))
    assert PluralityConfig().n_answers == 8
