"""Instruction reversal and execution validation of code, with the real sandbox.

The static fidelity parts (AST shape similarity, signatures, doctest-derived tests) are checked
directly; the reversal step runs on a scripted engine and the real `phi4ray.verify.sandbox.run_python`
(about a dozen sandbox runs in all, well under a second each).
"""
from __future__ import annotations

import asyncio
import re

import pyarrow as pa

from phi4ray.data.synth import reversal
from phi4ray.data.synth.llm import CallConfig, ScriptedEngine
from phi4ray.data.synth.reversal import (
    ReversalConfig,
    ast_similarity,
    derive_tests,
    fidelity,
    reversal_step,
    signature_match,
    validate_code,
    validate_step,
)

FAST = CallConfig(retries=0, backoff_s=0)

MEDIAN = '''def median(values):
    """The middle value of a non-empty list.

    >>> median([3, 1, 2])
    2
    >>> median([4, 1, 3, 2])
    2.5
    """
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2
'''
# the same program with every name changed and the docstring gone
MEDIAN_RENAMED = '''def median(xs):
    s = sorted(xs)
    k = len(s) // 2
    if len(s) % 2:
        return s[k]
    return (s[k - 1] + s[k]) / 2
'''
# wrong for even lengths: passes the odd-length example, fails the even one
MEDIAN_BUGGY = '''def median(xs):
    s = sorted(xs)
    return s[len(s) // 2]
'''
CLAMP = '''def clamp(x, lo, hi):
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x
'''
CLAMP_TESTS = "assert clamp(5, 0, 3) == 3\nassert clamp(-1, 0, 3) == 0\nassert clamp(2, 0, 3) == 2\n"
CLAMP_BUGGY = "def clamp(x, lo, hi):\n    return max(lo, x)\n"
WRONG_TESTS = "assert clamp(5, 0, 3) == 5\n"


def test_ast_similarity_ignores_names_and_docstrings_but_not_structure():
    assert ast_similarity(MEDIAN, MEDIAN_RENAMED) == 1.0
    assert ast_similarity(MEDIAN, MEDIAN_BUGGY) < 0.7
    assert ast_similarity("x = a + b", "x = a - b") < 1.0  # operators count
    assert ast_similarity("x = a + b", "y = c + d") == 1.0  # names do not
    assert ast_similarity("x = a + a", "x = a + b") < 1.0  # but data flow does
    assert ast_similarity(MEDIAN, "def median(:") is None


def test_signature_match_compares_the_top_level_interface():
    assert signature_match(CLAMP, CLAMP_BUGGY) == 1.0
    assert signature_match(CLAMP, "def clamp(x, bounds):\n    pass\n") == 0.0
    assert signature_match(CLAMP + "\ndef other():\n    pass\n", CLAMP) == 0.5
    assert signature_match("class A:\n    def get(self, k): pass\n", "class A:\n    def get(self, key): pass\n") == 1.0
    assert signature_match("print(1)\n", "print(2)\n") == 1.0  # no interface to miss


def test_fidelity_gates_on_tests_and_otherwise_scores_structure():
    assert fidelity(0.2, 0.0, True) == 0.55 and fidelity(1.0, 1.0, False) == 0.0
    assert fidelity(0.8, 1.0, None) == 0.9


def test_derive_tests_turns_doctests_into_a_script_the_sandbox_runs():
    tests = derive_tests(MEDIAN)
    assert tests is not None and derive_tests(CLAMP) is None
    assert validate_code(MEDIAN, tests).ok
    assert validate_code(MEDIAN_RENAMED, tests).ok
    failed = validate_code(MEDIAN_BUGGY, tests)
    assert failed.status == "tests_failed"


def test_validate_code_runs_generated_code_and_tests_in_the_sandbox():
    assert validate_code(f"Here it is:\n```python\n{CLAMP}```\n", CLAMP_TESTS).ok
    bad = validate_code(CLAMP_BUGGY, CLAMP_TESTS)
    assert (bad.status, bad.detail) == ("tests_failed", "AssertionError")
    assert validate_code("def f(:\n", CLAMP_TESTS).status == "syntax_error"  # no sandbox run needed
    assert validate_code("   ", CLAMP_TESTS).status == "no_code"
    rows = asyncio.run(validate_step([
        {"seed_id": "good", "code": CLAMP, "tests": CLAMP_TESTS, "template_id": "instruction_to_code@2"},
        {"seed_id": "bad", "code": CLAMP_BUGGY, "tests": CLAMP_TESTS},
        {"seed_id": "untested", "code": CLAMP}]))
    pa.Table.from_pylist(rows, schema=reversal.VALIDATION_SCHEMA)
    assert [(r["seed_id"], r["status"]) for r in rows] == [("good", "ok"), ("bad", "tests_failed"),
                                                          ("untested", "bad_seed: no tests")]
    assert rows[0]["template_id"] == "instruction_to_code@2"


# --- reversal step ---------------------------------------------------------------------------------
def instruction_for(code: str) -> str:
    name = re.search(r"def (\w+)", code).group(1)
    marker = {MEDIAN: "median-good", CLAMP: "clamp-good"}.get(code, "")
    if "LEAK" in code:
        return f"Instruction: write this\n```python\n{code}```"
    return f"Instruction:\nWrite a function {name}. [{marker or name}]"


REGENERATED = {"median-good": MEDIAN_RENAMED, "clamp-good": CLAMP, "median_b": MEDIAN_BUGGY,
               "clamp_b": CLAMP_BUGGY, "shout": "def shout(s):\n    return s.upper() + '!'\n"}


def reversal_reply(prompt: str) -> str:
    if prompt.startswith("Below is a piece of Python code"):
        return instruction_for(re.search(r"\[Code\]\n(.*?)\n\[End of Code\]", prompt, re.S).group(1))
    key = re.search(r"\[([\w-]+)\]\n\[End of Instruction\]", prompt).group(1)
    return f"```python\n{REGENERATED[key]}```"


def test_reversal_keeps_faithful_regenerations_and_drops_the_rest():
    seeds = [
        {"seed_id": "doctest-faithful", "code": MEDIAN},                       # tests derived from doctests
        {"seed_id": "given-faithful", "code": CLAMP, "tests": CLAMP_TESTS},
        {"seed_id": "doctest-buggy", "code": MEDIAN.replace("def median", "def median_b")
                                            .replace(">>> median(", ">>> median_b(")},
        {"seed_id": "given-buggy", "code": CLAMP.replace("clamp", "clamp_b"),
         "tests": CLAMP_TESTS.replace("clamp", "clamp_b")},
        {"seed_id": "bad-tests", "code": CLAMP, "tests": WRONG_TESTS},
        {"seed_id": "no-tests", "code": "def shout(s):\n    return s.upper() + '!'\n"},
        {"seed_id": "leak", "code": "def leak(x):\n    return x  # LEAK\n"},
        {"seed_id": "unparsable", "code": "def broken(:"},
        {"seed_id": "too-long", "code": CLAMP * 20},
    ]
    eng = ScriptedEngine(reversal_reply)
    rows = asyncio.run(reversal_step(eng, seeds, ReversalConfig(threshold=0.7, max_code_tokens=300, fix_rounds=0),
                                     FAST))
    pa.Table.from_pylist(rows, schema=reversal.SCHEMA)
    by = {r["seed_id"]: r for r in rows}
    assert [r["seed_id"] for r in rows] == [s["seed_id"] for s in seeds]
    status = {k: r["status"] for k, r in by.items()}
    assert status == {"doctest-faithful": "ok", "given-faithful": "ok", "doctest-buggy": "regenerated_fails_tests",
                      "given-buggy": "regenerated_fails_tests", "bad-tests": "original_fails_tests: tests_failed",
                      "no-tests": "ok", "leak": "instruction_leaks_code",
                      "unparsable": "bad_seed: code does not parse",
                      "too-long": "bad_seed: code longer than 300 AST tokens"}
    ok = by["doctest-faithful"]
    assert (ok["tests_source"], ok["tests_passed"], ok["ast_similarity"], ok["fidelity"]) == ("doctest", True, 1.0, 1.0)
    assert ok["instruction"] == "Write a function median. [median-good]" and ok["code"] == MEDIAN
    assert ok["template_id"] == "code_to_instruction@2+instruction_to_code@2"
    assert by["given-faithful"]["tests_source"] == "given"
    assert by["given-buggy"]["fidelity"] == 0.0 and by["given-buggy"]["tests_passed"] is False
    assert (by["no-tests"]["tests_source"], by["no-tests"]["tests_passed"], by["no-tests"]["fidelity"]) == (
        "none", None, 1.0)
    assert by["leak"]["regenerated_code"] is None  # dropped before any regeneration
    # the original's tests run before any LLM call: 6 instructions (not bad-tests, unparsable, too-long), 5 regenerations
    assert sum(len(c) for c in eng.calls) == 6 + 5


def test_execution_feedback_fixes_a_failing_regeneration_within_its_rounds():
    """A regeneration that fails its tests goes back with what the tests printed: the doctest's
    report of the even-length case. The median's fix passes and is kept after one round; the
    clamp's teacher repeats its bug and the row is dropped after `fix_rounds`, with the output."""
    fixes = []

    def reply(prompt: str) -> str:
        if prompt.startswith("The Python code below was written"):
            fixes.append(prompt)
            fixed = MEDIAN_RENAMED.replace("def median", "def median_b") if "[median_b]" in prompt else CLAMP_BUGGY
            return f"```python\n{fixed}```"
        return reversal_reply(prompt)

    seeds = [{"seed_id": "doctest-buggy", "code": MEDIAN.replace("def median", "def median_b")
                                                       .replace(">>> median(", ">>> median_b(")},
             {"seed_id": "given-buggy", "code": CLAMP.replace("clamp", "clamp_b"),
              "tests": CLAMP_TESTS.replace("clamp", "clamp_b")},
             {"seed_id": "no-tests", "code": "def shout(s):\n    return s.upper() + '!'\n"}]
    rows = asyncio.run(reversal_step(ScriptedEngine(reply), seeds, ReversalConfig(fix_rounds=2), FAST))
    pa.Table.from_pylist(rows, schema=reversal.SCHEMA)
    by = {r["seed_id"]: r for r in rows}
    assert (by["doctest-buggy"]["status"], by["doctest-buggy"]["fix_rounds"]) == ("ok", 1)
    assert by["doctest-buggy"]["tests_passed"] is True and by["doctest-buggy"]["test_feedback"] is None
    assert (by["given-buggy"]["status"], by["given-buggy"]["fix_rounds"]) == ("regenerated_fails_tests", 2)
    assert "NameError: name 'clamp_b' is not defined" in by["given-buggy"]["test_feedback"]  # the bug, named
    assert by["no-tests"]["fix_rounds"] == 0  # passed (nothing to fix)
    assert len(fixes) == 1 + 2  # median once, clamp twice
    median_fix = next(f for f in fixes if "[median_b]" in f)
    assert "Failed example:" in median_fix and "median_b([3, 1, 2])" in median_fix  # the doctest report
    assert rows[0]["template_id"].endswith("+fix_code@1")
