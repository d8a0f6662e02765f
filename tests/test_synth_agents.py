r"""The multi-agent step (phi4ray.data.synth.agents) on a scripted teacher: two solvers and a referee,
kept only when the referee's final answer equals a solver's; every other outcome is a row with its
reason; the referee's parser, the step's parse rate and its config. No Ray, no model."""
from __future__ import annotations

import asyncio
import re

import pyarrow as pa
import pytest

from phi4ray.data.synth.agents import SCHEMA, AgentsConfig, agents_step, answers_in_form, parse_referee
from phi4ray.data.synth.llm import CallConfig, Sampling, ScriptedEngine
from phi4ray.data.synth.outputs import step_report
from phi4ray.data.synth.steps import STEPS
from phi4ray.presets import run_preset
from phi4ray.run.errors import ConfigError
from phi4ray.run.overrides import OverrideError, apply_overrides

FAST = CallConfig(retries=1, backoff_s=0, batch_size=8)  # a retry alone: a failing prompt fails only itself


def referee_reply(verdict: str, solution: str, differences: str = "step 2 adds where the other multiplies") -> str:
    return f"Differences: {differences}\nCorrect: {verdict}\nSolution:\n{solution}"


# question -> (solver A's reply, solver B's reply, the referee's reply)
SCRIPT = {
    "Q-one": ("3 * 4 = 12\n\\boxed{12}", "3 + 4 = 7\n\\boxed{7}",
              referee_reply("A", "Three rows of four: 3 * 4.\n\\boxed{12.0}")),
    "Q-both": ("half\n\\boxed{1/2}", "check: 0.5 * 2 = 1\n\\boxed{0.5}", referee_reply("both", "\\boxed{\\frac{1}{2}}", "none")),
    "Q-silent": ("\\boxed{3}", "I could not finish the work", None),
    "Q-lost": ("\\boxed{3}", "\\boxed{4}", "Differences: none\nCorrect: A\nThe first one is right."),
    "Q-wild": ("\\boxed{3}", "\\boxed{4}", referee_reply("neither", "\\boxed{5}")),
    "Q-down": ("\\boxed{3}", "\\boxed{3}", "unused"),
}


def role(prompt: str) -> int:
    return next(i for i, who in enumerate(("You are Solver A", "You are Solver B", "You are the referee"))
                if prompt.startswith(who))


def teacher(prompt: str) -> str:
    question = re.search(r"\[Question\]\n(.*?)\n\[End of Question\]", prompt, re.S).group(1)
    return SCRIPT[question][role(prompt)]


def run_step(questions, fail=lambda p, a: False, config=AgentsConfig()):
    engine = ScriptedEngine(teacher, fail=fail)
    rows = asyncio.run(agents_step(engine, questions, config=config, call=FAST))
    return rows, engine


def one(question: str, **kw) -> dict:
    return run_step([{"seed_id": "s", "question": question}], **kw)[0][0]


def test_kept_when_the_referee_agrees_with_one_solver_and_its_solution_is_the_document():
    row = one("Q-one")
    assert (row["status"], row["agrees_with"], row["solvers_agree"]) == ("ok", "a", False)
    assert (row["answer_a"], row["answer_b"], row["referee_answer"]) == ("12", "7", "12.0")  # 12.0 = 12
    assert row["referee_verdict"] == "a" and row["referee_solution"] == "Three rows of four: 3 * 4.\n\\boxed{12.0}"
    # the document stands without the solutions the referee judged: no differences, no verdict
    assert STEPS["agents"].text(row) == "User: Q-one\n\nAssistant: Three rows of four: 3 * 4.\n\\boxed{12.0}"


def test_solvers_that_agree_by_value_are_recorded_as_agreeing():
    row = one("Q-both")
    assert (row["status"], row["solvers_agree"], row["agrees_with"]) == ("ok", True, "both")
    assert (row["answer_a"], row["answer_b"], row["referee_answer"]) == ("1/2", "0.5", "\\frac{1}{2}")


@pytest.mark.parametrize("question, status, refereed", [
    ("Q-silent", "solver_no_answer", False),            # solver B wrote no final answer: nothing to compare
    ("Q-lost", "referee_no_answer", True),              # the referee gave no solution section
    ("Q-wild", "referee_disagrees_with_both", True),    # 5 is neither 3 nor 4
])
def test_each_way_to_be_dropped_has_its_reason(question, status, refereed):
    row = one(question)
    assert (row["status"], row["agrees_with"], row["referee_text"] is not None) == (status, None, refereed)


def test_teacher_errors_and_bad_seeds_are_rows_and_the_referee_sees_only_answered_pairs():
    questions = [{"seed_id": q, "question": q} for q in SCRIPT] + [{"seed_id": "empty", "question": " "}]
    rows, engine = run_step(questions, fail=lambda p, a: "Q-down" in p and p.startswith("You are Solver B"))
    by = {r["seed_id"]: r for r in rows}
    assert [r["seed_id"] for r in rows] == [*SCRIPT, "empty"]
    assert by["Q-down"]["status"].startswith("llm_error") and by["Q-down"]["solution_a"] == "\\boxed{3}"
    assert by["empty"]["status"] == "bad_seed: no question"
    assert {r["seed_id"]: r["status"] for r in rows if r["seed_id"] in ("Q-one", "Q-both")} == {"Q-one": "ok",
                                                                                             "Q-both": "ok"}
    refereed = [p for call in engine.calls for p in call if role(p) == 2]
    # one referee prompt per question whose solvers both answered, each with both solutions in it
    assert sorted(re.search(r"\[Question\]\n(\S+)", p).group(1) for p in refereed) == [
        "Q-both", "Q-lost", "Q-one", "Q-wild"]
    one_prompt = next(p for p in refereed if "Q-one" in p)
    assert "[Solution A]\n3 * 4 = 12\n\\boxed{12}\n[End of Solution A]" in one_prompt and "3 + 4 = 7" in one_prompt
    assert engine.calls.index(next(c for c in engine.calls if role(c[0]) == 2)) == len(engine.calls) - 1  # last


def test_rows_have_the_schema_the_templates_and_a_guide_per_role():
    rows, engine = run_step([{"seed_id": q, "question": q} for q in SCRIPT])
    assert all(list(r) == SCHEMA.names for r in rows)
    pa.Table.from_pylist(rows, schema=SCHEMA)  # raises on a value of the wrong type
    assert {r["template_id"] for r in rows} == {"agents_solver_a@1+agents_solver_b@1+agents_referee@1"}
    assert all(g and "\\\\boxed" in g["regex"] for g in engine.guides)  # every role's answer form was sent


def test_the_referee_parser_reads_dressed_labels_and_ignores_a_solution_label_in_the_differences():
    ref = parse_referee("**Differences:** the sum\n**Correct:** Both\n**Final solution:**\n2 + 2 = 4\n\\boxed{4}")
    assert (ref.verdict, ref.solution) == ("both", "2 + 2 = 4\n\\boxed{4}")
    tricky = parse_referee("Solution: A adds\nCorrect: B\nSolution:\n\\boxed{4}")
    assert (tricky.verdict, tricky.solution) == ("b", "\\boxed{4}")
    assert parse_referee("Correct: maybe\nno solution here") == parse_referee(None) == parse_referee("")
    assert parse_referee("Correct: A\nSolution:\n   ").solution is None


def test_the_parse_rate_counts_every_solver_and_referee_reply_in_the_asked_form():
    rows, _ = run_step([{"seed_id": q, "question": q} for q in SCRIPT], fail=lambda p, a: "Q-down" in p)
    # solvers: 5 questions answered twice, one without a box (Q-silent); referees: 4, one unparsed (Q-lost)
    assert answers_in_form(rows) == (9 + 3, 10 + 4)
    seeds = [{"seed_id": q, "question": q} for q in SCRIPT]
    rep = step_report("agents", seeds, rows, 1, 1)
    assert (rep["answers_read"], rep["parse_rate"], rep["ok"]) == (14, round(12 / 14, 4), 2)
    assert rep["dropped"] == {"llm_error": 1, "referee_disagrees_with_both": 1, "referee_no_answer": 1,
                              "solver_no_answer": 1}


def test_config_per_role_sampling_and_question_sources():
    cfg = apply_overrides(run_preset("tiny"), ["synth.agents.referee.max_tokens=32"])
    assert cfg.synth.agents.referee == Sampling(32, 0.3) and cfg.synth.agents.solver_b.max_tokens == 64  # tiny: short
    assert cfg.synth.steps[-2:] == ("plurality", "agents")  # the default runs it, after plurality
    with pytest.raises(ConfigError, match="AgentsConfig.rel_tol"):
        AgentsConfig(rel_tol=-1)
    with pytest.raises(ConfigError, match="AgentsConfig.referee must be a Sampling"):
        AgentsConfig(referee=64)
    with pytest.raises((ConfigError, OverrideError), match="agents without qa.*agents would have no question"):
        apply_overrides(run_preset("tiny"), ["synth.arith_questions=0", "synth.steps=agents"])
    assert apply_overrides(run_preset("tiny"), ["synth.steps=agents"]).synth.steps == ("agents",)  # arithmetic
