"""Evaluation library: IFEval checks, built-in suites, JSONL, statistics, the runner against a
scripted OpenAI-compatible server on loopback, and lm-evaluation-harness against the same server.

No Ray, no vLLM: the server is `http.server` in a thread, scripted per item (right, wrong, no
answer, a 500 then right, always 500)."""
from __future__ import annotations

import ast
import asyncio
import json
import math
import operator
import re
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from phi4ray.evals import ifeval
from phi4ray.evals.config import EvalConfig
from phi4ray.evals.files import check_eval_files, decontam_files, load_suites, suite_files
from phi4ray.evals.generators import (
    BUILTIN_SUITES,
    DEFAULT_SUITES,
    MAX_SIZE,
    arith_suite,
    builtin_suites,
    is_prime,
    write_builtin_suites,
)
from phi4ray.evals.jsonl import load_suite_jsonl
from phi4ray.evals.kinds import REGISTRY, Grade, ItemKind, is_empty, render_completion, render_prompt
from phi4ray.evals.lm_eval_task import run_lm_eval, write_lm_eval_task
from phi4ray.evals.models import (
    deployments_that_fit,
    graded_dir,
    in_groups,
    lanes,
    model_fingerprint,
    split_main_lane,
    stage_models,
)
from phi4ray.evals.runner import (
    EvalError,
    grade,
    item_seed,
    pass_at_k,
    run_suite,
    run_suites,
    wilson_interval,
    write_results,
)
from phi4ray.evals.schema import EvalItem, Suite, SuiteError
from phi4ray.evals.scores import score_lines, stage_counts
from phi4ray.presets import run_preset
from phi4ray.run.errors import ConfigError, MissingInput
from phi4ray.serve.endpoint import EndpointConfig, OpenAIEndpoint
from phi4ray.toy.arith import PRIME_TEMPLATES, ArithConfig, make_problems, question_text, sft_conversation, split_of
from phi4ray.toy.evals import TOY_SUITES, toy_arith_suite
from phi4ray.verify.oracles import ChoiceOracle, MathOracle, math_equal
from phi4ray.verify.sandbox import CodeOracle

# --- IFEval checks ------------------------------------------------------------------------------
LOREM = " ".join(["word"] * 60)
IFEVAL_CASES = [  # (spec, a compliant response, a violating response)
    ({"type": "word_count", "num_words": 50, "relation": "at least"}, LOREM, "too short"),
    ({"type": "word_count", "num_words": 5, "relation": "less than"}, "just four words here", "one two three four five"),
    ({"type": "keyword_frequency", "keyword": "river", "frequency": 2, "relation": "at least"},
     "The River bends; the river sleeps.", "One river only."),
    ({"type": "include_keywords", "keywords": ["compass", "orbit"]}, "An orbit and a Compass.", "Only an orbit."),
    ({"type": "forbidden_words", "forbidden_words": ["very"]}, "Everything is fine (every day).", "It is Very fine."),
    ({"type": "bullet_count", "num_bullets": 2}, "Intro\n* one\n- two", "* one\n* two\n* three"),
    ({"type": "paragraph_count", "num_paragraphs": 2}, "First part.\n***\nSecond part.", "One\n***\n***\nTwo"),
    ({"type": "highlight_count", "num_highlights": 2}, "A *first* and **second** part.", "Only *one* here."),
    ({"type": "placeholder_count", "num_placeholders": 2}, "Send to [name] at [address].", "Send to [name]."),
    ({"type": "title"}, "<<A poem of joy>>\nRoses are red.", "<<>> no real title"),
    ({"type": "json_format"}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
    ({"type": "end_phrase", "end_phrase": "Any other questions?"}, "Here it is. Any other questions?",
     "Any other questions? Bye."),
    ({"type": "postscript", "postscript_marker": "P.S."}, "Hello.\n\nP.S. See you soon.", "Hello. PS see you."),
    ({"type": "postscript", "postscript_marker": "P.P.S"}, "Hello.\nP.P.S. Again.", "Hello.\nP.S. Again."),
    ({"type": "quotation"}, '"Wrapped in quotes."', '"Open but not closed.'),
    ({"type": "no_comma"}, "No commas at all here.", "Yes, one comma."),
    ({"type": "lowercase"}, "this whole answer is written in plain lowercase english letters about the weather.",
     "This answer starts with a capital letter and talks about the weather."),
    ({"type": "uppercase"}, "THIS WHOLE ANSWER IS WRITTEN IN CAPITAL ENGLISH LETTERS ABOUT THE WEATHER TODAY.",
     "THIS ANSWER IS MOSTLY CAPITAL BUT this part is not, sadly."),
    ({"type": "response_language", "language": "de"},
     "Heute ist das Wetter sehr schön, und wir gehen am Nachmittag im Park spazieren.",
     "Today the weather is lovely, and we are going for a walk in the park this afternoon."),
]


@pytest.mark.parametrize("spec,good,bad", IFEVAL_CASES, ids=[f"{c[0]['type']}-{i}" for i, c in enumerate(IFEVAL_CASES)])
def test_ifeval_check_accepts_compliant_and_rejects_violating(spec, good, bad):
    assert ifeval.check(good, spec) is True
    assert ifeval.check(bad, spec) is False
    assert ifeval.check("   \n", spec) is False  # strict: an empty response follows no instruction
    assert ifeval.describe(spec).strip()


def test_ifeval_cases_cover_every_check_type():
    assert {c[0]["type"] for c in IFEVAL_CASES} == set(ifeval.CHECKS)
    assert len(ifeval.CHECKS) >= 12


@pytest.mark.parametrize("spec,field", [
    ({"type": "nope"}, "nope"), ("word_count", "type"), ({"type": "word_count", "num_words": 5}, "relation"),
    ({"type": "word_count", "num_words": 0, "relation": "at least"}, "num_words"),
    ({"type": "title", "extra": 1}, "extra"), ({"type": "response_language", "language": "xx"}, "language"),
    ({"type": "include_keywords", "keywords": []}, "keywords"),
])
def test_ifeval_bad_specs_name_the_field(spec, field):
    with pytest.raises(ifeval.CheckError, match=field):
        ifeval.validate_check(spec)


def test_ifeval_verdicts_are_lm_evals_checkers(monkeypatch):
    calls = []

    class Recorder:  # stands in for every lm-eval checker class
        def __init__(self, iid):
            self.iid = iid

        def build_description(self, **params):
            calls.append((self.iid, params))

        def check_following(self, text):
            return text == "yes"

    monkeypatch.setattr(ifeval, "_lm_eval_registry", lambda: defaultdict(lambda: Recorder))
    for kind in ifeval.LM_EVAL_IDS:
        spec = next(c[0] for c in IFEVAL_CASES if c[0]["type"] == kind)
        assert ifeval.check("yes", spec) is True and ifeval.check("no", spec) is False
    assert {iid for iid, _ in calls} == set(ifeval.LM_EVAL_IDS.values())
    assert ("keywords:existence", {"keywords": ["compass", "orbit"]}) in calls  # our parameters, by their names
    assert set(ifeval.CHECKS) - set(ifeval.LM_EVAL_IDS) == {"lowercase", "uppercase", "response_language"}


def test_ifeval_keywords_and_markers_match_as_written():
    # lm-eval hands them to `re` as patterns ("C++" would raise, "x+" would count every x); we escape them
    assert ifeval.check("I write C++ daily.", {"type": "include_keywords", "keywords": ["C++"]})
    assert not ifeval.check("I write C daily.", {"type": "include_keywords", "keywords": ["C++"]})
    assert ifeval.check("An axb here.", {"type": "forbidden_words", "forbidden_words": ["a.b"]})
    assert not ifeval.check("An a.b here.", {"type": "forbidden_words", "forbidden_words": ["a.b"]})
    spec = {"type": "keyword_frequency", "keyword": "x+", "frequency": 2, "relation": "at least"}
    assert not ifeval.check("x+ and x", spec) and ifeval.check("x+ and x+", spec)
    assert ifeval.check("Hi.\nNote: later", {"type": "postscript", "postscript_marker": "Note:"})
    assert not ifeval.check("Hi.\nNote later", {"type": "postscript", "postscript_marker": "Note:"})


def test_ifeval_wording_is_ifevals():
    registry = ifeval._lm_eval_registry()
    own = {"lowercase": "change_case:english_lowercase", "uppercase": "change_case:english_capital",
           "response_language": "language:response_language"}
    for spec, _, _ in IFEVAL_CASES:
        iid = ifeval.LM_EVAL_IDS.get(spec["type"]) or own[spec["type"]]
        params = {k: v for k, v in spec.items() if k != "type"}
        theirs = registry[iid](iid).build_description(**params)
        for words in params.get("keywords", params.get("forbidden_words")) or [], :
            theirs = theirs.replace(str(sorted(words)), ", ".join(words))  # a list, not its Python repr
        assert ifeval.describe(spec) == theirs


def test_ifeval_case_checks_tell_languages_by_fasttext():
    # IFEval's langdetect takes upper-case Spanish for English and short English for something else
    assert not ifeval.check("HOY HACE BUEN TIEMPO Y VAMOS A PASEAR POR EL PARQUE.", {"type": "uppercase"})
    assert ifeval.check("ok", {"type": "lowercase"}) and ifeval.check("HI THERE", {"type": "uppercase"})


def test_ifeval_grading_downloads_nothing(monkeypatch, capsys):
    # lm-eval's import calls nltk.download("punkt_tab") when the data is absent; grading must not
    import nltk  # deferred: only this test touches nltk itself

    def refuse(*args, **kwargs):
        raise AssertionError(f"nltk.download{args} called")

    monkeypatch.setattr(nltk, "download", refuse)
    for name in [m for m in sys.modules if m.startswith("lm_eval.tasks.ifeval.")]:
        monkeypatch.delitem(sys.modules, name)  # so the import runs again, download attempt and all
    registry = ifeval._lm_eval_registry.__wrapped__()
    assert registry["punctuation:no_comma"]("punctuation:no_comma").check_following("no commas here")
    assert nltk.download is refuse  # put back after the import
    assert capsys.readouterr().out == ""  # nor is lm-eval's "Downloaded punkt_tab on rank 0" printed


# --- built-in suites ------------------------------------------------------------------------------
def _as_json(suites):
    return [(s.name, s.version, [i.to_json() for i in s.items]) for s in suites]


def test_builtin_suites_are_deterministic_and_sized():
    a, b = builtin_suites(seed=3, size=20), builtin_suites(seed=3, size=20)
    assert _as_json(a) == _as_json(b)
    assert _as_json(builtin_suites(seed=4, size=20)) != _as_json(a)
    assert [s.name for s in a] == list(BUILTIN_SUITES) == ["arith", "choice", "code", "humaneval", "ifeval",
                                                           "toy_prime", "toy_arith"]
    # the toy suites measure the tiny preset's training domain only: evaluated when a preset asks;
    # the tiny model scores 0 on HumanEval, which would only cost its run minutes
    assert EvalConfig().suites == DEFAULT_SUITES == ("arith", "choice", "code", "humaneval", "ifeval")
    assert set(run_preset("tiny").eval.suites) == set(BUILTIN_SUITES) - {"humaneval"}
    assert run_preset("small").eval.suites == DEFAULT_SUITES
    assert all(len(s.items) == 20 for s in a)
    defaults = {s.name: len(s.items) for s in builtin_suites()}
    assert 30 <= defaults["arith"] <= 60 and 30 <= defaults["choice"] <= 60 and 30 <= defaults["ifeval"] <= 60
    assert defaults["code"] >= 20
    assert all("seed3" in s.version for s in a)
    with pytest.raises(SuiteError, match="size"):
        builtin_suites(size=0)


def test_builtin_suites_are_prefix_stable_and_capped():
    """The first n items of a size-N suite are the size-n suite's items: the suites generated at
    MAX_SIZE cover every eval.size, which curation's decontamination relies on."""
    big = builtin_suites(seed=7, size=MAX_SIZE)
    for n in (1, 5, 40, 333):
        for small, full in zip(builtin_suites(seed=7, size=n), big):
            assert [i.to_json() for i in small.items] == [i.to_json() for i in full.items[:len(small.items)]] \
                or small.name in ("code", "humaneval")  # a seeded subset of fixed problems, all in the full suite
            assert {i.id for i in small.items} <= {i.id for i in full.items}
            if small.name == "choice":  # correct letters balanced within one in every prefix
                counts = Counter(i.reference for i in small.items)
                assert max(counts[x] for x in "ABCD") - min(counts[x] for x in "ABCD") <= 1
    with pytest.raises(SuiteError, match="size"):
        builtin_suites(size=MAX_SIZE + 1)
    with pytest.raises(ConfigError, match="eval.size"):
        EvalConfig(size=MAX_SIZE + 1)


def test_decontam_files_do_not_depend_on_eval_size_or_suites(tmp_path):
    user = tmp_path / "mine.jsonl"
    user.write_text(json.dumps({"id": "q", "kind": "math", "prompt": "1+1?", "reference": "2"}) + "\n")
    configs = [SimpleNamespace(eval=EvalConfig(size=size, suites=names, files=(str(user),)))
               for size, names in ((12, ("arith", "choice", "code", "ifeval")), (MAX_SIZE, ("arith",)), (3, ("code",)))]
    found = []
    for i, cfg in enumerate(configs):
        paths = decontam_files(tmp_path / f"run{i}", cfg)
        assert paths[-1] == user and {p.name for p in paths[:-1]} == {f"{n}.jsonl" for n in BUILTIN_SUITES}
        found.append([p.read_text() for p in paths])
        # every item the eval stage runs at this size is among them
        prompts = {json.loads(line)["prompt"] for text in found[-1] for line in text.splitlines()}
        evaluated = load_suites(suite_files(tmp_path / f"run{i}", cfg))
        assert all(item.prompt in prompts for s in evaluated for item in s.items)
    assert found[0] == found[1] == found[2]
    with pytest.raises(MissingInput, match="eval.files"):
        check_eval_files(SimpleNamespace(eval=EvalConfig(files=(str(tmp_path / "nope.jsonl"),))), tmp_path, {})


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def test_toy_suites_are_held_out_questions_in_the_sft_prompt_format():
    prime, arith = builtin_suites(seed=5, size=40, names=TOY_SUITES)
    assert (prime.name, arith.name, len(prime.items), len(arith.items)) == ("toy_prime", "toy_arith", 40, 40)
    for item in prime.items + arith.items:
        # the user message is the bare question: what SFT puts in the user turn, no instruction added
        sft_user = sft_conversation({"question": item.prompt, "solution": "x"})[0]["content"]
        assert item.kind == "toy" and render_prompt(item) == item.prompt == sft_user
    assert {i.prompt for i in prime.items} == set(PRIME_TEMPLATES["test"]) and {i.reference for i in prime.items} == {
        "prime"}
    assert all(split_of(i.prompt) == "test" for i in arith.items) and len({i.prompt for i in arith.items}) == 40
    for i in arith.items:  # the reference is the expression's value (+ and -: left to right is Python's order)
        assert int(i.reference) == eval(i.prompt.removeprefix("What is ").removesuffix("?"))
    trained = {p["question"] for p in make_problems(4000, 0, ArithConfig())}  # SFT's and the synthetic source's kind
    assert len(trained) > 2000 and not trained & {i.prompt for i in prime.items + arith.items}


def test_toy_arith_suite_holds_every_held_out_question_at_most():
    space = {question_text([a, b, c], [o1, o2]) for a in range(1, 10) for b in range(1, 10) for c in range(1, 10)
             for o1 in "+-" for o2 in "+-"}
    heldout = {q for q in space if split_of(q) == "test"}
    full = toy_arith_suite(seed=1, size=MAX_SIZE)
    assert 400 < len(full.items) == len(heldout) < MAX_SIZE and {i.prompt for i in full.items} == heldout
    assert full.version.endswith(f"-n{len(heldout)}")
    assert [i.prompt for i in toy_arith_suite(seed=1, size=30).items] == [i.prompt for i in full.items[:30]]
    assert [i.prompt for i in toy_arith_suite(seed=2, size=30).items] != [i.prompt for i in full.items[:30]]


@pytest.mark.parametrize("reference, response, ok, reason", [
    ("prime", "The answer is \\boxed{37}.", True, "correct"),
    ("prime", "The answer is \\boxed{39}.", False, "wrong answer"),
    ("prime", "The answer is \\boxed{101}.", False, "wrong answer"),  # the domain's primes are below 100
    ("prime", "I would rather not say.", False, "no answer found"),
    ("prime", "  ", False, "empty response"),
    ("6", "3 + 5 = 8. 8 - 2 = 6. The answer is \\boxed{6}.", True, "correct"),
    ("6", "3 + 5 = 8. 8 - 2 = 7. The answer is \\boxed{7}.", False, "wrong answer"),
])
def test_toy_kind_grades_by_the_domain_oracle(reference, response, ok, reason):
    item = EvalItem("t", "toy", "Write down a prime below one hundred." if reference == "prime" else
                    "What is 3 + 5 - 2?", reference)
    g = grade(item, response)
    assert (g.correct, g.reason) == (ok, reason)


def test_toy_items_need_a_reference():
    with pytest.raises(SuiteError, match="reference must not be empty"):
        EvalItem("t", "toy", "What is 1 + 2 + 3?", "")


def _evaluate(formula: str, values: dict[str, int]) -> Fraction:
    """Exact value of a + - * / formula over named integers (the test's own arithmetic)."""
    def walk(node):
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Name):
            return Fraction(values[node.id])
        if isinstance(node, ast.Constant):
            return Fraction(node.value)
        raise ValueError(ast.dump(node))
    return walk(ast.parse(formula, mode="eval").body)


def test_arith_answers_follow_from_the_prompt():
    suite = arith_suite(seed=0, size=48)
    langs = Counter(i.meta["lang"] for i in suite.items)
    assert {"de", "fr", "es"} <= set(langs) and langs["en"] == 36
    for item in suite.items:
        values = item.meta["values"]
        for v in values.values():  # every operand is in the text the model reads
            assert re.search(rf"(?<![\d.]){v}(?![\d])", item.prompt), (item.id, v, item.prompt)
        truth = _evaluate(item.meta["formula"], values)
        assert truth > 0 or item.meta["template"] == "fractions"  # a - b can go below zero
        assert math_equal(item.reference, f"{truth.numerator}/{truth.denominator}"), (item.id, item.reference, truth)
        assert math_equal(item.reference, item.reference)
        assert MathOracle()(f"Working... so the answer is \\boxed{{{item.reference}}}.", item.reference)
        assert not MathOracle()(f"\\boxed{{{truth + 1}}}", item.reference)


def _option_truth(item: EvalItem) -> list[bool]:
    """Which options are right, by the test's own computation (None: only the stored answer)."""
    kind, m, opts = item.meta["type"], item.meta, item.choices
    if kind == "prime":
        return [is_prime(int(o)) for o in opts]
    if kind == "not_prime":
        return [not is_prime(int(o)) for o in opts]
    if kind == "product":
        assert f"{m['a']} × {m['b']}" in item.prompt
        return [int(o) == m["a"] * m["b"] for o in opts]
    if kind == "gcd":
        return [int(o) == math.gcd(m["a"], m["b"]) for o in opts]
    if kind == "remainder":
        return [int(o) == m["a"] % m["b"] for o in opts]
    if kind == "fraction":
        best = max(Fraction(o) for o in opts)
        return [Fraction(o) == best for o in opts]
    if kind == "convert":
        factor = {"meters": 1000, "centimeters": 100, "grams": 1000, "minutes": 60, "seconds": 60,
                  "milliliters": 1000, "hours": 24, "inches": 12, "feet": 3, "days": 7}[m["to"]]
        return [int(o) == m["value"] * factor for o in opts]
    return [o == m["answer"] for o in opts]


def test_choice_letters_balanced_and_answers_computed():
    suite = builtin_suites(seed=1, names=["choice"])[0]
    assert Counter(i.reference for i in suite.items) == {"A": 12, "B": 12, "C": 12, "D": 12}
    assert len({i.meta["type"] for i in suite.items}) >= 7
    for item in suite.items:
        assert len(item.choices) == 4 and len(set(item.choices)) == 4
        truth = _option_truth(item)
        assert truth.count(True) == 1 and "ABCD"[truth.index(True)] == item.reference, item.prompt
        assert item.choices["ABCD".index(item.reference)] == item.meta["answer"]
        for letter, text in zip("ABCD", item.choices):
            assert f"\n{letter}. {text}" in item.prompt
        assert ChoiceOracle()(f"The answer is ({item.reference}).", item.reference)
        assert math_equal(item.meta["answer"], item.meta["answer"])


def test_code_tasks_pass_with_their_solution_and_fail_as_stubs():
    suite = builtin_suites(names=["code"])[0]
    assert len(suite.items) >= 20
    oracle = CodeOracle()

    def verdicts(item):
        solution = item.meta["canonical_solution"]
        stub = re.search(r"```python\n(.*)```", item.prompt, re.S).group(1) + "    pass\n"
        return (oracle(f"Here:\n```python\n{solution}```", item.tests), oracle(f"```python\n{stub}```", item.tests))

    with ThreadPoolExecutor(4) as pool:  # each run is a process: overlap their start-up
        results = dict(zip([i.id for i in suite.items], pool.map(verdicts, suite.items)))
    assert results == {i.id: (True, False) for i in suite.items}


def test_ifeval_suite_checks_valid_and_compatible():
    suite = builtin_suites(seed=2, names=["ifeval"])[0]
    seen = set()
    for item in suite.items:
        types = [c["type"] for c in item.checks]
        seen.update(types)
        for c in item.checks:
            ifeval.validate_check(c)
            assert ifeval.describe(c) in item.prompt
        assert len(set(types)) == len(types)
        assert not any(b in ifeval.CONFLICTS[a] for a in types for b in types)
    assert seen == set(ifeval.CHECKS)


# --- JSONL ------------------------------------------------------------------------------------
def test_jsonl_round_trip(tmp_path):
    paths = write_builtin_suites(tmp_path, seed=5, size=12)
    assert [p.name for p in paths] == [f"{n}.jsonl" for n in BUILTIN_SUITES]
    for suite, path in zip(builtin_suites(seed=5, size=12), paths):
        loaded = load_suite_jsonl(path)
        assert _as_json([loaded]) == _as_json([suite])
        first = json.loads(path.read_text().splitlines()[0])
        assert first["prompt"] == suite.items[0].prompt  # the text the model reads, for decontamination


def test_user_suite_takes_name_from_file_and_version_from_content(tmp_path):
    path = tmp_path / "my_math.jsonl"
    path.write_text(json.dumps({"id": "q1", "kind": "math", "prompt": "1+1?", "reference": "2"}) + "\n\n")
    suite = load_suite_jsonl(path)
    assert suite.name == "my_math" and suite.version.startswith("sha256:")
    path.write_text(json.dumps({"id": "q1", "kind": "math", "prompt": "1+2?", "reference": "3"}) + "\n")
    assert load_suite_jsonl(path).version != suite.version


GOOD = {"id": "a", "kind": "math", "prompt": "1+1?", "reference": "2"}


@pytest.mark.parametrize("line,field", [
    ("{not json", "invalid JSON"),
    ('["a"]', "JSON object"),
    (json.dumps({**GOOD, "refrence": "2"}), "refrence"),
    (json.dumps({"id": "b", "kind": "math", "reference": "2"}), "prompt"),
    (json.dumps({**GOOD, "id": "b", "kind": "essay"}), "kind"),
    (json.dumps({**GOOD, "id": "b", "reference": ""}), "reference"),
    (json.dumps({"id": "b", "kind": "choice", "prompt": "?", "reference": "E"}), "reference"),
    (json.dumps({"id": "b", "kind": "choice", "prompt": "?", "reference": "C", "choices": ["x", "y"]}), "reference"),
    (json.dumps({"id": "b", "kind": "code", "prompt": "write f"}), "tests"),
    (json.dumps({"id": "b", "kind": "ifeval", "prompt": "write", "checks": [{"type": "title", "n": 1}]}), "checks[0]"),
    (json.dumps({**GOOD, "id": "b", "meta": []}), "meta"),
    (json.dumps({**GOOD, "id": 7}), "id"),
    (json.dumps(GOOD), "repeats line 1"),
    (json.dumps({**GOOD, "id": "b", "version": "2"}), "version"),
])
def test_bad_lines_raise_with_file_line_and_field(tmp_path, line, field):
    path = tmp_path / "user.jsonl"
    path.write_text(json.dumps({**GOOD, "version": "1"}) + "\n" + line + "\n")
    with pytest.raises(SuiteError) as e:
        load_suite_jsonl(path)
    assert f"{path}:2:" in str(e.value) and field in str(e.value)


def test_empty_and_unreadable_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SuiteError, match="no items"):
        load_suite_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(SuiteError, match="cannot read"):
        load_suite_jsonl(tmp_path / "missing.jsonl")


# --- the run's models (the eval stage's Ray-free part) --------------------------------------------
def _cfg(device="cpu", **eval_kw):
    return SimpleNamespace(eval=EvalConfig(**eval_kw), serve=SimpleNamespace(device=device))


def test_lanes_groups_and_the_main_lane(tmp_path):
    shapes = {"init": {"rope": 1}, "pretrain": {"rope": 1}, "midtrain": {"rope": 2}, "sft": {"rope": 2}}
    all_lanes = lanes(shapes)
    assert all_lanes == [["init", "pretrain"], ["midtrain", "sft"]]
    # a CPU deployment takes 2 logical CPUs, plus one for the ingress; a GPU one a GPU
    assert deployments_that_fit({"CPU": 8}, _cfg()) == 3 and deployments_that_fit({"CPU": 2}, _cfg()) == 1
    assert deployments_that_fit({"CPU": 8, "GPU": 2}, _cfg("gpu")) == 2
    assert deployments_that_fit({"CPU": 100}, _cfg(models_at_once=2)) == 2
    assert in_groups(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    models = {s: tmp_path / "models" / s for s in shapes}
    main, side = split_main_lane(all_lanes, all_lanes, models, models["sft"].resolve(), "phi4ray")
    assert main == ["midtrain", "sft"] and side == {"phi4ray-eval-0": ["init", "pretrain"]}
    main, side = split_main_lane(all_lanes, all_lanes, models, None, "phi4ray")
    assert main is None and side == {"phi4ray-eval-0": ["init", "pretrain"], "phi4ray-eval-1": ["midtrain", "sft"]}


def test_stage_models_and_grades_kept_only_for_an_unchanged_model(tmp_path):
    with pytest.raises(MissingInput, match="none of eval.models"):
        stage_models(tmp_path, _cfg(models=("sft", "dpo")))
    model = tmp_path / "models" / "sft"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert stage_models(tmp_path, _cfg(models=("sft", "dpo"))) == {"sft": model}
    fp = model_fingerprint(model)
    (graded_dir(tmp_path, "sft", fp) / "arith.jsonl").write_text("{}\n")
    assert (graded_dir(tmp_path, "sft", fp) / "arith.jsonl").is_file()  # same model: a rerun resumes
    (model / "extra.txt").write_text("a retrained model")
    assert model_fingerprint(model) != fp
    assert not (graded_dir(tmp_path, "sft", model_fingerprint(model)) / "arith.jsonl").exists()


def test_score_lines_and_counts():
    row = {"accuracy": 0.5, "ci_low": 0.25, "ci_high": 0.75, "errors": 1}
    summary = {"sft": {"arith": row, "code": {**row, "accuracy": None, "errors": 0}}}
    assert score_lines(summary) == ["eval sft: arith 0.50 [0.25, 0.75], code n/a"]
    suites = [Suite("arith", "1", (EvalItem("a", "math", "1+1?", "2"),))]
    assert stage_counts(summary, suites) == {"models": 1, "suites": 1, "items": 1, "endpoint_errors": 1,
                                             "accuracy": {"sft": {"arith": 0.5, "code": None}}}


# --- statistics -----------------------------------------------------------------------------
def test_wilson_interval_known_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    # the interval holds the accuracy exactly, also where the formula's end equals it only up to
    # rounding (0/22, 6/6: the plot's error bars, accuracy - low and high - accuracy, went negative)
    assert wilson_interval(0, 22)[0] == 0.0 and wilson_interval(6, 6)[1] == 1.0
    assert all(lo <= k / n <= hi for n in range(1, 130) for k in range(n + 1) for lo, hi in [wilson_interval(k, n)])


def test_pass_at_k_unbiased_estimator():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 1, 10), (5, 0, 2), (7, 7, 3), (200, 13, 100)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12, abs=1e-12)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


# --- grading ----------------------------------------------------------------------------------
def test_grade_reasons():
    m = EvalItem("m", "math", "1+1?", "2")
    assert grade(m, "so \\boxed{2}").reason == "correct"
    assert grade(m, "so \\boxed{3}").reason == "wrong answer"
    assert grade(m, "no idea").reason == "no answer found"
    assert grade(m, "").reason == "empty response"
    c = EvalItem("c", "choice", "?", "B")
    assert grade(c, "the answer is a mystery").reason == "no answer found"
    k = EvalItem("k", "code", "f", tests="assert f() == 1")
    assert grade(k, "def f(): return 1").reason == "no code block"
    bad = grade(k, "```python\ndef f():\n    return 2\n```")
    assert (bad.correct, bad.reason, bad.detail["status"]) == (False, "tests failed", "error")
    assert "AssertionError" in bad.detail["error"]


class WordKind(ItemKind):
    """A kind defined outside the library: answer with one word, graded case-insensitively."""
    name, uses = "word", ("reference",)

    def validate(self, item):
        if not re.fullmatch(r"[A-Za-z]+", item.get("reference") or ""):
            return f"reference={item.get('reference')!r} must be one word {self.where(item)}"
        return super().validate(item)

    def instruction(self, item):
        return "Answer with one word only."

    def grade(self, item, response, sandbox_limits=None):
        if is_empty(response):
            return Grade(False, "empty response")
        said = response.strip().strip(".!").lower()
        return Grade(said == item.reference.lower(), "correct" if said == item.reference.lower() else "wrong answer",
                     {"extracted": said})


def test_a_registered_kind_validates_renders_and_grades(tmp_path, monkeypatch):
    """A new kind is one class and one registry entry: its suite file loads (and a bad line is
    refused by the kind's own rule), renders with its instruction, and grades, with no Ray."""
    line = {"id": "w1", "kind": "word", "prompt": "The opposite of hot?", "reference": "cold"}
    path = tmp_path / "words.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(SuiteError, match="kind='word'"):
        load_suite_jsonl(path)  # unknown until registered
    monkeypatch.setitem(REGISTRY, "word", WordKind())
    suite = load_suite_jsonl(path)
    item = suite.items[0]
    assert render_prompt(item) == "The opposite of hot?\n\nAnswer with one word only."
    assert render_completion(item) == render_prompt(item) + "\n\n"
    assert grade(item, "Cold.") == Grade(True, "correct", {"extracted": "cold"})
    assert grade(item, "warm").reason == "wrong answer" and grade(item, None).reason == "empty response"
    path.write_text(json.dumps({**line, "reference": "two words"}) + "\n")
    with pytest.raises(SuiteError, match=f"{path}:1: reference='two words' must be one word"):
        load_suite_jsonl(path)
    path.write_text(json.dumps({**line, "tests": "assert True"}) + "\n")
    with pytest.raises(SuiteError, match="tests is not used by word items"):
        load_suite_jsonl(path)


def test_scripted_endpoint_grades_a_registered_kind(monkeypatch):
    monkeypatch.setitem(REGISTRY, "word", WordKind())
    suite = Suite("words", "1", (EvalItem("w1", "word", "Opposite of hot?", "cold"),
                                 EvalItem("w2", "word", "Opposite of up?", "down")))
    server = Scripted({render_prompt(suite.items[0]): _always("Cold"), render_prompt(suite.items[1]): _always("left")})
    try:
        result = _run(server.url, suite)
    finally:
        server.close()
    assert (result.n, result.correct, result.by_kind) == (2, 1, {"word": {"n": 2, "correct": 1}})
    assert result.instructions is None


# --- the scripted OpenAI-compatible server ----------------------------------------------------
class Scripted:
    """An OpenAI-compatible HTTP server on 127.0.0.1 answering from a script: prompt -> function of
    (call number for that prompt, request body) returning (status, list of texts)."""

    def __init__(self, script, *, ignore_n: bool = False):
        self.script, self.ignore_n = script, ignore_n
        self.calls: Counter[str] = Counter()
        self.paths: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                chat = self.path.endswith("/chat/completions")
                prompt = body["messages"][-1]["content"] if chat else body["prompt"]
                with outer.lock:
                    outer.calls[prompt] += 1
                    outer.paths[self.path] += 1
                    outer.bodies.append(body)
                    outer.headers.append(dict(self.headers))
                    call = outer.calls[prompt]
                status, texts = outer.lookup(prompt)(call, body)
                if status != 200:
                    payload = {"error": {"message": "scripted failure"}}
                else:
                    n = 1 if outer.ignore_n else body.get("n", 1)
                    texts = (texts * n)[:n]
                    payload = {"id": "x", "model": body["model"], "choices": [
                        {"index": i, "finish_reason": "stop",
                         **({"message": {"role": "assistant", "content": t}} if chat else {"text": t})}
                        for i, t in enumerate(texts)]}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def lookup(self, prompt):
        return self.script.get(prompt) or self.script[prompt.strip()]

    def requests(self) -> int:
        return sum(self.calls.values())

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _endpoint(url: str) -> OpenAIEndpoint:
    return OpenAIEndpoint(EndpointConfig(base_url=url, model="phi4ray-tiny", max_retries=2, backoff_s=0.01,
                                         backoff_max_s=0.05, timeout_s=20))


def _run(url, suite, **kw):
    async def go():
        async with _endpoint(url) as ep:
            return await run_suite(ep, suite, **kw)
    return asyncio.run(go())


def _always(text):
    return lambda call, body: (200, [text])


E2E_ITEMS = [  # item, scripted behaviour
    (EvalItem("m-right", "math", "What is 2 + 3?", "5"), _always("2 + 3 = 5, so \\boxed{5}.")),
    (EvalItem("m-equiv", "math", "What is 1/2 + 1/4?", "3/4"), _always("\\boxed{\\frac{3}{4}}")),
    (EvalItem("m-wrong", "math", "What is 7 * 6?", "42"), _always("\\boxed{48}")),
    (EvalItem("m-none", "math", "Guess the number.", "10"), _always("I cannot tell.")),
    (EvalItem("c-right", "choice", "Pick 4.\n\nA. 3\nB. 4\nC. 5\nD. 6", "B", choices=("3", "4", "5", "6")),
     _always("The answer is (B).")),
    (EvalItem("c-wrong", "choice", "Pick 5.\n\nA. 3\nB. 4\nC. 5\nD. 6", "C", choices=("3", "4", "5", "6")),
     _always("The answer is (A).")),
    (EvalItem("k-right", "code", "Write add(a, b).", tests="assert add(2, 3) == 5"),
     _always("```python\ndef add(a, b):\n    return a + b\n```")),
    (EvalItem("k-wrong", "code", "Write add(a, b), please.", tests="assert add(2, 3) == 5"),
     _always("```python\ndef add(a, b):\n    return a - b\n```")),
    (EvalItem("i-right", "ifeval", "Write about rivers. No commas; add a title.",
              checks=({"type": "no_comma"}, {"type": "title"})), _always("<<Rivers>>\nRivers run to the sea.")),
    (EvalItem("i-half", "ifeval", "Write 50+ words about rivers without commas.",
              checks=({"type": "word_count", "num_words": 50, "relation": "at least"}, {"type": "no_comma"})),
     _always("Rivers are nice.")),
    (EvalItem("m-flaky", "math", "What is 9 + 1?", "10"),
     lambda call, body: (500, []) if call == 1 else (200, ["\\boxed{10}"])),
    (EvalItem("m-down", "math", "What is 1 + 1?", "2"), lambda call, body: (500, [])),
]
E2E_SUITE = Suite("mixed", "test-1", tuple(item for item, _ in E2E_ITEMS))


def _script(items, render):
    return {render(item): fn for item, fn in items}


def test_runner_end_to_end_with_retries_errors_and_resume(tmp_path):
    server = Scripted(_script(E2E_ITEMS, render_prompt))
    try:
        records = tmp_path / "mixed.jsonl"
        r = _run(server.url, E2E_SUITE, concurrency=4, records_path=records)
        assert (r.n_items, r.n, r.errors, r.correct) == (12, 11, 1, 6)
        assert r.n + r.errors == r.n_items == len(r.records)
        assert r.accuracy == pytest.approx(6 / 11)
        assert (r.ci_low, r.ci_high) == pytest.approx(wilson_interval(6, 11))
        assert r.instructions["followed"] == 3 and r.instructions["total"] == 4
        assert r.reasons == {"correct": 6, "wrong answer": 2, "no answer found": 1, "tests failed": 1,
                             "failed: word_count": 1, "endpoint error": 1}
        assert r.by_kind["code"] == {"n": 2, "correct": 1}
        by_id = {rec["id"]: rec for rec in r.records}
        down = by_id["m-down"]
        assert down["error"] and "HTTP 500" in down["error"] and down["correct"] is None
        assert by_id["m-flaky"]["correct"] is True and by_id["m-flaky"]["error"] is None
        assert by_id["k-wrong"]["detail"]["status"] == "error"
        assert by_id["i-half"]["detail"]["followed"] == [False, True]
        assert by_id["m-right"]["prompt"] == render_prompt(E2E_ITEMS[0][0])
        assert "\\boxed{}" in by_id["m-right"]["prompt"]
        # one request each, the flaky one twice, the broken one 1 + max_retries times
        assert server.calls[render_prompt(E2E_ITEMS[10][0])] == 2
        assert server.calls[render_prompt(E2E_ITEMS[11][0])] == 3
        assert server.requests() == 10 + 2 + 3
        assert len(records.read_text().splitlines()) == 12

        # resume: nothing graded is asked again; without retry_errors, nothing at all
        before = server.requests()
        again = _run(server.url, E2E_SUITE, records_path=records, retry_errors=False)
        assert server.requests() == before
        assert again.summary() | {"wall_s": 0} == r.summary() | {"wall_s": 0}
        # by default the endpoint error is retried (still down: still an error, still counted once)
        again = _run(server.url, E2E_SUITE, records_path=records)
        assert server.requests() == before + 3
        assert (again.n, again.errors, again.correct) == (11, 1, 6)

        # a crash: the file holds three records and half of a fourth; the rerun does the rest
        lines = records.read_text().splitlines()
        records.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
        done_ids = {json.loads(line)["id"] for line in lines[:3]}
        before = server.requests()
        resumed = _run(server.url, E2E_SUITE, records_path=records)
        asked = server.requests() - before
        expected = sum(3 if item.id == "m-down" else 1 for item, _ in E2E_ITEMS if item.id not in done_ids)
        assert asked == expected
        assert (resumed.n, resumed.errors, resumed.correct) == (11, 1, 6)

        # records from other settings are refused, not mixed in
        with pytest.raises(EvalError, match="max_tokens"):
            _run(server.url, E2E_SUITE, records_path=records, max_tokens=7)
    finally:
        server.close()


def test_completion_mode_samples_and_pass_at_k(tmp_path):
    """Raw completions, 4 samples per item from a server that ignores `n` (the runner tops up)."""
    items = [EvalItem("a", "math", "What is 3 + 4?", "7"), EvalItem("b", "math", "What is 5 + 5?", "10")]
    right = {"a": 2, "b": 0}  # correct samples per item: a's first two calls, none of b's
    script = {render_completion(it): (lambda call, body, it=it: (200, ["\\boxed{%s}" % (
        it.reference if call <= right[it.id] else "0")])) for it in items}
    server = Scripted(script, ignore_n=True)
    try:
        async def go():
            async with _endpoint(server.url) as ep:
                return await run_suites(ep, [Suite("two", "v", tuple(items))], out_dir=tmp_path, mode="completion",
                                        samples=4, temperature=0.8)
        (r,) = asyncio.run(go())
        assert server.paths == {"/v1/completions": 8}
        assert all(b["prompt"].endswith("\n\n") and b["temperature"] == 0.8 for b in server.bodies)
        assert [rec["n_correct"] for rec in r.records] == [2, 0]
        assert (r.correct, r.n) == (1, 2)
        assert r.pass_at_k["pass@1"] == pytest.approx((2 / 4 + 0) / 2)
        assert r.pass_at_k["pass@4"] == pytest.approx((1 + 0) / 2)
        assert r.pass_at_k["pass@2"] == pytest.approx((pass_at_k(4, 2, 2) + 0) / 2)
        summary = json.loads((tmp_path / "summary.json").read_text())["suites"]["two"]
        assert summary["correct"] == 1 and summary["pass_at_k"] == r.pass_at_k
        assert len((tmp_path / "two.jsonl").read_text().splitlines()) == 2
    finally:
        server.close()


def test_each_item_is_sampled_with_its_own_seed(tmp_path):
    """One question asked six times at temperature 1 (the toy_prime suite's case) must be six draws:
    one seed for every request would make them one answer counted six times."""
    items = tuple(EvalItem(f"p{i}", "toy", "Write down a prime below one hundred.", "prime") for i in range(6))
    # the scripted model's "sample" is a function of the request's seed: 2 is prime, 4 is not
    server = Scripted({items[0].prompt: lambda call, body: (200, [f"\\boxed{{{2 + 2 * (body['seed'] % 2)}}}"])})
    try:
        r = _run(server.url, Suite("same", "v", items), seed=7, temperature=1.0)
        seeds = [b["seed"] for b in server.bodies]
        assert sorted(seeds) == sorted(item_seed(7, i.id) for i in items) and len(set(seeds)) == 6
        assert r.correct == sum(1 - item_seed(7, i.id) % 2 for i in items)  # each item graded on its own draw
        _run(server.url, Suite("same", "v", items), seed=7, temperature=1.0)
        assert sorted(b["seed"] for b in server.bodies[6:]) == sorted(seeds)  # the same draws on a rerun
        _run(server.url, Suite("same", "v", items), temperature=1.0)
        assert all("seed" not in b for b in server.bodies[12:])  # no seed asked: none sent
    finally:
        server.close()
    assert item_seed(7, "p0") != item_seed(8, "p0") and 0 <= item_seed(7, "p0") < 2 ** 31


def test_malformed_replies_are_error_rows(tmp_path):
    item = EvalItem("a", "math", "What is 3 + 4?", "7")
    server = Scripted({render_prompt(item): lambda call, body: (200, [])})  # 200 with no choices
    try:
        r = _run(server.url, Suite("bad", "v", (item,)))
        assert (r.n, r.errors, r.accuracy) == (0, 1, None)
        assert r.records[0]["reason"] == "malformed response"
        assert write_results([r], tmp_path).exists()
    finally:
        server.close()


# --- lm-evaluation-harness against the same server ---------------------------------------------
@pytest.fixture
def loopback_only(monkeypatch):
    """Refuse (and record) any connection or name lookup beyond loopback: no hub, no download."""
    attempts: list = []

    def local(host) -> bool:
        return host in (None, "localhost", "::1") or str(host).startswith("127.")

    def guard(real):
        def connect(sock, address):
            if isinstance(address, tuple) and not local(address[0]):
                attempts.append(address)
                raise OSError(f"test: network access to {address} refused")
            return real(sock, address)
        return connect

    real_gai = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if not local(host):
            attempts.append(host)
            raise socket.gaierror(f"test: name lookup of {host} refused")
        return real_gai(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guard(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(socket.socket.connect_ex))
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(socket.gaierror, match="test: name lookup"):
        socket.getaddrinfo("hub.example.invalid", 443)
    attempts.clear()
    return attempts


def _tiny_tokenizer(folder: Path) -> None:
    """A two-word HF tokenizer folder: lm-eval only needs it to load and to name an EOS (the real
    Phi-4 one takes seconds to build, and the endpoint tokenizes anyway)."""
    from tokenizers import Tokenizer, models, pre_tokenizers  # deferred: only the lm-eval tokenizer test needs it

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<|im_end|>": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "unk_token": "<unk>"}))


def test_lm_eval_harness_talks_to_the_endpoint(tmp_path, loopback_only):
    suite = arith_suite(seed=0, size=6)
    # items 0-2 answered right (item 2 in an equivalent form only the oracle accepts), 3-5 wrong
    answers = {}
    for i, item in enumerate(suite.items):
        ref = item.reference
        if i == 2:
            value = Fraction(ref)
            ref = f"\\frac{{{value.numerator * 2}}}{{{value.denominator * 2}}}"
        answers[render_prompt(item)] = "Step by step... \\boxed{%s}" % (ref if i < 3 else "999999")
    server = Scripted({p: (lambda call, body, t=t: (200, [t])) for p, t in answers.items()})
    try:
        yaml_path = write_lm_eval_task(suite, tmp_path / "task")
        assert yaml_path.name == "phi4ray_arith.yaml" and (tmp_path / "task" / "phi4ray_arith.jsonl").exists()
        t0 = time.monotonic()
        chat = run_lm_eval(server.url, "phi4ray-tiny", yaml_path.parent, chat=True, num_concurrent=2)
        took = time.monotonic() - t0
        assert chat["task"] == "phi4ray_arith" and chat["n"] == 6
        assert json.loads(json.dumps(chat)) == chat  # plain JSON values, ready for a summary file
        assert chat["oracle_match"] == pytest.approx(3 / 6)
        assert chat["exact_match"] == pytest.approx(2 / 6)
        assert server.paths["/v1/chat/completions"] == 6
        # raw completions, with a tokenizer from a local folder (the only kind accepted)
        _tiny_tokenizer(tmp_path / "tokenizer")
        plain = run_lm_eval(server.url.removesuffix("/v1"), "phi4ray-tiny", yaml_path.parent, chat=False, limit=4,
                            tokenizer=tmp_path / "tokenizer")
        assert plain["n"] == 4 and plain["oracle_match"] == pytest.approx(3 / 4)
        assert server.paths["/v1/completions"] == 4
        completions = [b for b in server.bodies if "prompt" in b]
        assert all("<|im_end|>" in b["stop"] and b["temperature"] == 0.0 for b in completions)
        assert all(b["model"] == "phi4ray-tiny" for b in server.bodies)
        # nothing reached for the hub or a download; a refused lookup of s3.amazonaws.com shows up
        # only when the whole suite runs in this process (not this file alone), and the answers
        # above were computed without it
        assert not [a for a in loopback_only if "s3.amazonaws.com" not in str(a)]
        print(f"lm_eval simple_evaluate (import + 6 chat requests): {took:.1f}s")
    finally:
        server.close()


def test_lm_eval_task_only_for_math_and_needs_local_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="only math"):
        write_lm_eval_task(E2E_SUITE, tmp_path)
    path = write_lm_eval_task(arith_suite(size=2), tmp_path)
    with pytest.raises(ValueError, match="local folder"):
        run_lm_eval("http://127.0.0.1:9/v1", "m", path.parent, chat=True, tokenizer="microsoft/phi-4")
