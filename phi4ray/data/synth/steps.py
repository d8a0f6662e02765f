"""The synthesis steps as the stage runs them: each step's function, row schema, and how a kept
row becomes a training document (`STEPS`, in recipe order; plurality last, after qa)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyarrow as pa

from phi4ray.data.synth import plurality, qa, reversal, revise, rewrite


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


@dataclass(frozen=True)
class StepSpec:
    run: Callable          # async (engine, seeds, config=, call=) -> rows of `schema`
    schema: pa.Schema
    seed_field: str        # the seed's text, for report examples
    text: Callable[[dict], str | None]  # a kept row's training document
    shown: tuple[str, ...]  # the row's fields a report example shows


STEPS = {
    "rewrite": StepSpec(rewrite.rewrite_step, rewrite.SCHEMA, "text", lambda r: r.get("text"), ("kind", "text")),
    "revise": StepSpec(revise.revise_step, revise.SCHEMA, "task", lambda r: dialogue(r.get("task"), r.get("text")),
                       ("rounds", "min_score", "text")),
    "reversal": StepSpec(reversal.reversal_step, reversal.SCHEMA, "code",
                         lambda r: dialogue(r.get("instruction"), _code_block(r.get("code"))),
                         ("tests_source", "fidelity", "instruction", "regenerated_code")),
    "qa": StepSpec(qa.qa_step, qa.SCHEMA, "text", _qa_text, ("question", "reasoning", "answer")),
    "plurality": StepSpec(plurality.plurality_step, plurality.SCHEMA, "question",
                          lambda r: dialogue(r.get("question"), r.get("majority_solution")),
                          ("organic_answer", "majority_answer", "majority_share", "cluster_sizes", "majority_solution")),
}
