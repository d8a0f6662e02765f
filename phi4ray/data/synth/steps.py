"""The synthesis steps as the stage runs them: each step's function, row schema, and how a kept
row becomes a training document (`STEPS`, in recipe order; the question steps last, after qa)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyarrow as pa

from phi4ray.data.synth import agents, plurality, qa, reversal, revise, rewrite

# the steps seeded with questions (seeds.plurality_seeds), qa's kept ones among them: they run after qa
QUESTION_STEPS = ("plurality", "agents")


def dialogue(user: str | None, assistant: str | None) -> str | None:
    """A prompt/response pair as one plain-text training document. Plain text, not Phi-4 chat tokens:
    the tokenize stage encodes documents with `encode_ordinary`, where special tokens are text."""
    if not (user or "").strip() or not (assistant or "").strip():
        return None
    return f"User: {user.strip()}\n\nAssistant: {assistant.strip()}"


def _qa_text(r: dict) -> str | None:
    body = f"{r['reasoning'].strip()}\n\nAnswer: {r['answer']}" if r.get("reasoning") else r.get("answer")
    return dialogue(r.get("question"), body)


def _code_block(code: str | None) -> str | None:
    return f"```python\n{code.strip()}\n```" if code else None


def why(row: dict) -> str:
    """A row status's reason without its detail ("llm_error: TimeoutError: ..." -> "llm_error")."""
    return (row["status"] or "none").split(":", 1)[0]


def _rows_form(read: set[str], unparsed: set[str]):
    """(answers in the asked form, answers read) over rows whose status (its reason, before any
    ":") says a parser read the teacher's answer: `read`, of which `unparsed` lacked the form."""
    def count(rows: list[dict]) -> tuple[int, int]:
        whys = [why(r) for r in rows]
        n = sum(w in read for w in whys)
        return n - sum(w in unparsed for w in whys), n
    return count


def _qa_form(rows: list[dict]) -> tuple[int, int]:
    """Per seed: a reply with at least one Question/Reasoning/Answer block, of the seeds answered."""
    answered = {r["seed_id"] for r in rows if why(r) not in ("llm_error", "bad_seed")}
    empty = {r["seed_id"] for r in rows if r["status"] == "no_pairs"}
    return len(answered - empty), len(answered)


def _plurality_form(rows: list[dict]) -> tuple[int, int]:
    """Per sampled answer: one with a final answer to vote with, of all answers sampled."""
    return sum(r.get("n_parsed") or 0 for r in rows), sum(r.get("n_answers") or 0 for r in rows)


@dataclass(frozen=True)
class StepSpec:
    run: Callable          # async (engine, seeds, config=, call=) -> rows of `schema`
    schema: pa.Schema
    seed_field: str        # the seed's text, for report examples
    text: Callable[[dict], str | None]  # a kept row's training document
    shown: tuple[str, ...]  # the row's fields a report example shows
    # (answers in the form the step's parser reads, answers read): the parse rate in the report
    form: Callable[[list[dict]], tuple[int, int]]


STEPS = {
    "rewrite": StepSpec(rewrite.rewrite_step, rewrite.SCHEMA, "text", lambda r: r.get("text"), ("kind", "text"),
                        _rows_form({"ok", "empty", "too_short", "corrupt", "copy_of_seed", "no_solution",
                                    "no_final_answer"}, {"no_solution", "no_final_answer"})),
    "revise": StepSpec(revise.revise_step, revise.SCHEMA, "task", lambda r: dialogue(r.get("task"), r.get("text")),
                       ("rounds", "min_score", "text"),
                       _rows_form({"ok", "below_threshold", "unparseable_critique"}, {"unparseable_critique"})),
    "reversal": StepSpec(reversal.reversal_step, reversal.SCHEMA, "code",
                         lambda r: dialogue(r.get("instruction"), _code_block(r.get("code"))),
                         ("tests_source", "fidelity", "fix_rounds", "instruction", "regenerated_code"),
                         _rows_form({"ok", "empty_instruction", "instruction_leaks_code", "no_code", "syntax_error",
                                     "regenerated_fails_tests", "low_fidelity"}, {"empty_instruction", "no_code"})),
    "qa": StepSpec(qa.qa_step, qa.SCHEMA, "text", _qa_text, ("question", "reasoning", "answer"), _qa_form),
    "plurality": StepSpec(plurality.plurality_step, plurality.SCHEMA, "question",
                          lambda r: dialogue(r.get("question"), r.get("majority_solution")),
                          ("organic_answer", "majority_answer", "majority_share", "cluster_sizes", "majority_solution"),
                          _plurality_form),
    "agents": StepSpec(agents.agents_step, agents.SCHEMA, "question",
                       lambda r: dialogue(r.get("question"), r.get("referee_solution")),
                       ("answer_a", "answer_b", "solvers_agree", "referee_verdict", "referee_answer", "referee_solution"),
                       agents.answers_in_form),
}
