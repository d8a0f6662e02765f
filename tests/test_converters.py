"""Converters from public benchmark files to suite JSONL: each format from a small file in its
public shape (one record malformed), loaded back by the suite loader, with the quarantine and the
counts checked."""
from __future__ import annotations

import csv
import gzip
import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi4ray.evals.config import EvalConfig
from phi4ray.evals.converters import ConvertError, convert
from phi4ray.evals.converters.__main__ import main
from phi4ray.evals.files import load_suites
from phi4ray.evals.jsonl import load_suite_jsonl
from phi4ray.evals.kinds import LETTERS, get_kind


def _lines(path: Path, rows: list) -> Path:
    """A JSONL file: dicts as JSON, strings as they are (a malformed line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _convert(fmt: str, source: Path, **kw):
    """(counts, items by id, quarantine lines) of a conversion, the suite loaded as eval loads it."""
    out = source.parent / "out" / f"{fmt}.jsonl"
    counts = convert(fmt, source, out, **kw)
    assert counts.read == counts.written + counts.quarantined
    suite = load_suite_jsonl(out)
    assert suite.name == counts.suite and len(suite.items) == counts.written
    bad = [json.loads(line) for line in Path(counts.quarantine).read_text().splitlines()]
    assert len(bad) == counts.quarantined
    return counts, {i.id: i for i in suite.items}, bad


def _picked(item) -> str:
    """The text of the option the reference letter names (and the prompt shows it under that letter)."""
    text = item.choices[LETTERS.index(item.reference)]
    assert f"\n{item.reference}. {text}" in item.prompt
    return text


def test_gsm8k(tmp_path):
    src = _lines(tmp_path / "test.jsonl", [
        {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                     "How many clips did Natalia sell altogether in April and May?",
         "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                   "altogether in April and May.\n#### 72"},
        {"question": "A farm has 1,200 hens and buys 34 more. How many hens?", "answer": "1200+34=1234\n#### 1,234"},
        {"question": "What is 2+2?", "answer": "4"},
        '{"question": "cut off',
    ])
    counts, items, bad = _convert("gsm8k", src)
    assert (counts.read, counts.written, counts.quarantined) == (4, 2, 2)
    assert [(i.kind, i.reference) for i in items.values()] == [("math", "72"), ("math", "1234")]
    assert items["gsm8k-1"].prompt.startswith("Natalia sold clips")
    assert [(b["where"], b["reason"]) for b in bad] == [
        (f"{src}:3", "the answer has no final '#### N'"), (f"{src}:4", bad[1]["reason"])]
    assert bad[1]["reason"].startswith("invalid JSON")


def test_math_jsonl_and_per_problem_files(tmp_path):
    src = _lines(tmp_path / "math.jsonl", [
        {"problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.", "level": "Level 1", "type": "Prealgebra",
         "solution": "We get $\\boxed{1}$ first? No: $\\frac{2}{4}+\\frac{1}{4}=\\boxed{\\frac{3}{4}}$."},
        {"problem": "Find $x$.", "solution": "x = 5", "answer": "5", "subject": "Algebra", "level": 2,
         "unique_id": "test/algebra/12.json"},
        {"problem": "No answer here.", "level": "Level 3", "type": "Geometry", "solution": "It is 7."},
    ])
    counts, items, bad = _convert("math", src)
    assert (counts.read, counts.written, counts.quarantined) == (3, 2, 1)
    first = items["math-1"]
    assert first.reference == "\\frac{3}{4}" and first.meta["level"] == "Level 1" and first.meta["type"] == "Prealgebra"
    assert items["math-test-algebra-12"].reference == "5"
    assert bad[0]["where"] == f"{src}:3" and "boxed" in bad[0]["reason"]

    root = tmp_path / "MATH" / "test"
    (root / "algebra").mkdir(parents=True)
    (root / "algebra" / "1.json").write_text(json.dumps(
        {"problem": "Solve $2x=6$.", "level": "Level 1", "type": "Algebra", "solution": "$x=\\boxed{3}$"}))
    (root / "algebra" / "2.json").write_text("{not json")
    counts, items, bad = _convert("math", root)
    assert list(items) == ["math-test-algebra-1"] and items["math-test-algebra-1"].reference == "3"
    assert items["math-test-algebra-1"].meta["source"] == "algebra/1.json:1"
    assert bad[0]["where"].endswith("algebra/2.json:1") and bad[0]["reason"].startswith("invalid JSON")


def test_mmlu_original_csv(tmp_path):
    src = tmp_path / "abstract_algebra_test.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Find the degree for the given field extension Q(sqrt(2), sqrt(3)) over Q.", "0", "4", "2", "6", "B"])
        w.writerow(["Statement 1 | A, B hold.\nStatement 2 | C holds.", "True, True", "False, False",
                    "True, False", "False, True", "C"])
        w.writerow(["A row cut short", "1", "2", "3", "D"])
    counts, items, bad = _convert("mmlu", src)
    assert (counts.read, counts.written, counts.quarantined) == (3, 2, 1)
    first, second = items.values()
    assert first.id == "mmlu-abstract_algebra-1" and first.meta["subject"] == "abstract_algebra"
    assert (first.reference, _picked(first)) == ("B", "4") and first.choices == ("0", "4", "2", "6")
    assert second.id == "mmlu-abstract_algebra-2" and (second.reference, _picked(second)) == ("C", "True, False")
    assert bad[0]["where"] == f"{src}:4" and "5 fields" in bad[0]["reason"]  # the quoted newline spans line 3


def test_mmlu_hf_parquet_row_groups(tmp_path):
    rows = [{"question": "What is the capital of France?", "subject": "geography",
             "choices": ["Berlin", "Madrid", "Paris", "Rome"], "answer": 2},
            {"question": "2 + 2 = ?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "22"], "answer": 1},
            {"question": "Broken answer", "subject": "x", "choices": ["a", "b", "c", "d"], "answer": 7}]
    src = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src, row_group_size=1)  # read back group by group
    counts, items, bad = _convert("mmlu", src)
    assert (counts.read, counts.written, counts.quarantined) == (3, 2, 1)
    assert [(i.id, i.reference, _picked(i)) for i in items.values()] == [
        ("mmlu-geography-1", "C", "Paris"), ("mmlu-elementary_mathematics-2", "B", "4")]
    assert bad[0]["where"] == f"{src}:3" and "answer=7" in bad[0]["reason"]


def test_mmlu_pro_ten_options(tmp_path):
    ten = [f"{n} J" for n in range(10)]
    src = _lines(tmp_path / "mmlu_pro.jsonl", [
        {"question_id": 70, "question": "Which energy is largest?", "options": ten, "answer": "J", "answer_index": 9,
         "cot_content": "", "category": "physics", "src": "stemez-Physics"},
        {"question_id": 71, "question": "Pick the second.", "options": ["x", "y", "z"], "answer": "B", "answer_index": 1,
         "category": "other", "src": "ori_mmlu-misc"},
        {"question_id": 72, "question": "Disagreeing answer", "options": ["x", "y", "z"], "answer": "A",
         "answer_index": 2, "category": "other"},
    ])
    counts, items, bad = _convert("mmlu_pro", src)
    assert (counts.read, counts.written, counts.quarantined) == (3, 2, 1)
    big = items["mmlu_pro-70"]
    assert big.letters == "ABCDEFGHIJ" and (big.reference, _picked(big)) == ("J", "9 J")
    assert big.meta["category"] == "physics" and "\nJ. 9 J" in big.prompt
    assert "(A, B, C, D, E, F, G, H, I or J)" in get_kind("choice").render(big)
    assert (items["mmlu_pro-71"].reference, _picked(items["mmlu_pro-71"])) == ("B", "y")
    assert "disagree" in bad[0]["reason"]


GPQA_COLUMNS = ["Pre-Revision Question", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                "Incorrect Answer 3", "Explanation", "Record ID", "High-level domain", "Subdomain"]


def _gpqa(path: Path, n: int, broken: bool = True) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(GPQA_COLUMNS)
        for i in range(n):
            w.writerow(["", f"Question {i}:\nwhich particle?", f"right {i}", f"wrong {i}a", f"wrong {i}b", f"wrong {i}c",
                        "because", f"rec{i:04d}", "Physics", "Quantum Mechanics"])
        if broken:
            w.writerow(["", "No correct answer", "", "a", "b", "c", "", "recXXXX", "Physics", ""])
    return path


def test_gpqa_shuffle_is_deterministic_and_spread(tmp_path):
    src = _gpqa(tmp_path / "gpqa_diamond.csv", 40)
    counts, items, bad = _convert("gpqa", src)
    assert (counts.read, counts.written, counts.quarantined) == (41, 40, 1)
    assert "'Correct Answer'" in bad[0]["reason"] and bad[0]["where"] == f"{src}:82"  # each question spans 2 lines
    for i, item in enumerate(items.values()):
        assert item.id == f"gpqa-rec{i:04d}" and _picked(item) == f"right {i}"
        assert sorted(item.choices) == sorted([f"right {i}", f"wrong {i}a", f"wrong {i}b", f"wrong {i}c"])
    assert {i.reference for i in items.values()} == set("ABCD")  # not always at A
    # the same seed: the same bytes; the order comes from the record, not its place in the file
    again = convert("gpqa", src, tmp_path / "again.jsonl")
    assert Path(again.out).read_bytes() == Path(counts.out).read_bytes()
    small = _gpqa(tmp_path / "first3.csv", 3, broken=False)
    _, first3, _ = _convert("gpqa", small)
    assert [i.choices for i in first3.values()] == [i.choices for i in list(items.values())[:3]]
    _, reseeded, _ = _convert("gpqa", src, seed=1)
    assert [i.choices for i in reseeded.values()] != [i.choices for i in items.values()]


def test_mgsm_language_from_the_file_name_or_given(tmp_path):
    src = tmp_path / "mgsm_de.tsv"
    src.write_text("Janets Enten legen 16 Eier pro Tag. Wie viele Dollar verdient sie?\t18\n"
                   "Ein Gewand braucht 2 Rollen. Wie viele insgesamt?\t1,000\n"
                   "Eine Zeile ohne Antwort\n", encoding="utf-8")
    counts, items, bad = _convert("mgsm", src)
    assert counts.suite == "mgsm_de" and (counts.read, counts.written, counts.quarantined) == (3, 2, 1)
    assert [(i.id, i.reference, i.meta["lang"]) for i in items.values()] == [("mgsm_de-1", "18", "de"),
                                                                          ("mgsm_de-2", "1000", "de")]
    assert bad[0]["where"] == f"{src}:3" and "TAB" in bad[0]["reason"]
    other = tmp_path / "german.tsv"
    other.write_text("Wie viel ist 2+3?\t5\n", encoding="utf-8")
    with pytest.raises(ConvertError, match="--language"):
        convert("mgsm", other, tmp_path / "x.jsonl")
    counts, items, _ = _convert("mgsm", other, language="de")
    assert counts.suite == "mgsm_de" and items["mgsm_de-1"].meta["lang"] == "de"


HE_PROMPT = '''from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """ Check if in given list of numbers, are any two numbers closer to each other than
    given threshold.
    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)
    False
    """
'''
HE_SOLUTION = '''    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2 and abs(elem - elem2) < threshold:
                return True
    return False
'''
HE_TEST = '''

import math

def assertion(out, exp, atol):
    if atol == 0:
        assert out == exp, f"out: {out}, exp: {exp}"
    else:
        assert math.isclose(out, exp, abs_tol=atol)


def check(candidate):
    inputs = [[[1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3], [[1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05], [[1.1, 2.2, 3.1], 1.0]]
    results = [True, False, True]
    for i, (inp, exp) in enumerate(zip(inputs, results)):
        assertion(candidate(*inp), exp, 0)
'''


def _fenced(code: str) -> str:
    return f"Here it is:\n```python\n{code}```\n"


def test_humanevalplus_items_grade_in_the_sandbox(tmp_path):
    src = _lines(tmp_path / "HumanEvalPlus.jsonl", [
        {"task_id": "HumanEval/0", "prompt": HE_PROMPT, "entry_point": "has_close_elements",
         "canonical_solution": HE_SOLUTION, "test": HE_TEST, "contract": "", "atol": 0,
         "base_input": [[[1.0, 2.0, 3.9], 0.3]], "plus_input": [[[1.1, 2.2, 3.1], 1.0], [[], 0.1]]},
        {"task_id": "HumanEval/1", "prompt": "def f():\n", "canonical_solution": "    return 1\n", "test": "def check(c): pass"},
    ])
    counts, items, bad = _convert("humanevalplus", src)
    assert (counts.read, counts.written, counts.quarantined) == (2, 1, 1)
    assert "'entry_point' is missing" in bad[0]["reason"]
    item = items["humanevalplus-0"]
    assert item.tests.endswith("check(has_close_elements)\n") and item.meta["preamble"] == HE_PROMPT
    assert item.meta["plus_inputs"] == 2 and item.meta["task_id"] == "HumanEval/0"
    code = get_kind("code")
    assert code.grade(item, _fenced(HE_PROMPT + HE_SOLUTION)).correct
    wrong = code.grade(item, _fenced(HE_PROMPT + "    return None\n"))
    assert not wrong.correct and wrong.reason == "tests failed"


def test_the_suite_files_go_to_eval_files(tmp_path):
    src = _lines(tmp_path / "gsm.jsonl", [{"question": "1+1?", "answer": "#### 2"}])
    out = tmp_path / "suites" / "gsm8k_small.jsonl"
    counts = convert("gsm8k", src, out, tmp_path / "q.jsonl", suite="gsm8k_small")
    assert counts.quarantine == str(tmp_path / "q.jsonl") and (tmp_path / "q.jsonl").read_text() == ""
    cfg = EvalConfig(suites=(), files=(str(out),))
    assert [s.name for s in load_suites([Path(f) for f in cfg.files])] == ["gsm8k_small"]


def test_errors_are_one_line(tmp_path, capsys):
    src = _lines(tmp_path / "gsm.jsonl", [{"question": "1+1?", "answer": "#### 2"}])
    bad_parquet = tmp_path / "broken.parquet"
    bad_parquet.write_bytes(b"PAR1 not really")
    only_bad = _lines(tmp_path / "bad.jsonl", ["[1, 2]"])
    for args, message in ((("nope", src), "unknown format 'nope'; known formats: gsm8k, math"),
                          (("gsm8k", tmp_path / "missing.jsonl"), "no such file"),
                          (("gpqa", src), "gpqa reads .csv; cannot read gsm.jsonl"),
                          (("mmlu", bad_parquet), "not a readable Parquet file"),
                          (("gsm8k", only_bad), "none of 1 records could be converted")):
        with pytest.raises(ConvertError, match=message.replace(".", r"\.")) as e:
            convert(*args, tmp_path / "out.jsonl")
        assert "\n" not in str(e.value)
    assert not (tmp_path / "out.jsonl").exists()
    assert main(["nope", str(src), str(tmp_path / "o.jsonl")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["gsm8k", str(src), str(tmp_path / "o.jsonl")]) == 0
    assert "read 1 records: 1 items" in capsys.readouterr().out


def test_not_utf8_and_a_gzipped_file(tmp_path):
    src = tmp_path / "test.jsonl.gz"
    with gzip.open(src, "wb") as f:
        f.write(json.dumps({"question": "1+1?", "answer": "#### 2"}).encode() + b"\n" + b'{"question": "\xff"}\n')
    counts, items, bad = _convert("gsm8k", src)
    assert list(items) == ["gsm8k-1"] and bad[0]["where"] == f"{src}:2" and bad[0]["reason"].startswith("not UTF-8")


def test_memory_does_not_grow_with_the_file(tmp_path):
    src = tmp_path / "big.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for n in range(400):
            f.write(json.dumps({"question": f"{n} " + "How many apples? " * 1200, "answer": f"#### {n}"}) + "\n")
    size = src.stat().st_size  # about 8 MB
    tracemalloc.start()
    try:
        counts = convert("gsm8k", src, tmp_path / "big_out.jsonl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts.written == 400 and peak < size / 10, (peak, size)
