"""The user's PTS queries from a file: rows, kinds, quarantine, oracles, the stage key (no Ray)."""
from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi4ray.evals.kinds import render_prompt
from phi4ray.evals.schema import EvalItem
from phi4ray.model.phi4_tokenizer import phi4_tokenizer
from phi4ray.posttrain.pts import PTSConfig
from phi4ray.posttrain.queries import check_queries_file, load_query_file, pts_queries, query_oracle
from phi4ray.presets import run_preset
from phi4ray.run.errors import ConfigError, MissingInput
from phi4ray.run.stage import Stage, StageResult, stage_key
from phi4ray.toy.arith import make_problems

GOOD = [
    {"question": "Tom has 2 apples and buys 4 more. How many?", "answer": "2 + 4 = 6.\n#### 6"},  # GSM8K's shape
    {"id": "c1", "kind": "choice", "prompt": "2 + 2 = ?\n(A) 4\n(B) 5", "reference": "A", "choices": ["4", "5"]},
    {"id": "k1", "kind": "code", "prompt": "Write f() returning 4.", "tests": "assert f() == 4"},
]
BAD = [
    ("{not json", "invalid JSON"),
    (json.dumps({"id": "c2", "kind": "choice", "prompt": "p", "reference": "Z"}), "reference='Z' must be one letter"),
    (json.dumps({"id": "k2", "kind": "code", "prompt": "p"}), "tests must not be empty"),
    (json.dumps({"id": "i1", "kind": "ifeval", "prompt": "p", "checks": [{"type": "lowercase"}]}), "PTS judges"),
    (json.dumps({"id": "c1", "kind": "math", "prompt": "p", "reference": "1"}), "id 'c1' repeats"),
    (json.dumps(["a", "list"]), "must be an object"),
]


def _jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_file_of_three_kinds_with_bad_rows_kept_aside(tmp_path):
    lines = [json.dumps(GOOD[0]), BAD[0][0], json.dumps(GOOD[1]), "", *[b for b, _ in BAD[1:]], json.dumps(GOOD[2])]
    path = _jsonl(tmp_path / "q.jsonl", lines)
    queries, counts = load_query_file(path, "math", limit=100, quarantine=tmp_path / "out" / "quarantine.jsonl")
    assert counts == {"read": 9, "used": 3, "quarantined": 6, "by_kind": {"math": 1, "choice": 1, "code": 1}}
    assert [q["id"] for q in queries] == ["q.jsonl:1", "c1", "k1"] and [q["kind"] for q in queries] == ["math", "choice", "code"]
    # GSM8K's row: question -> prompt, the answer's final "#### N" -> reference
    assert queries[0]["item"]["reference"] == "6" and queries[0]["item"]["prompt"] == GOOD[0]["question"]
    # the question the model sees is the eval rendering: the prompt, then the kind's answer instruction
    assert queries[1]["question"] == render_prompt(EvalItem.from_json(queries[1]["item"]))
    assert queries[1]["question"].startswith(GOOD[1]["prompt"]) and "The answer is (X)" in queries[1]["question"]
    bad = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert [b["where"] for b in bad] == [f"{path}:{n}" for n in (2, 5, 6, 7, 8, 9)]
    assert bad[0]["row"] == "{not json"  # kept as it was
    for b, (_, reason) in zip(bad, BAD):
        assert reason in b["reason"], (b, reason)


def test_parquet_rows_and_the_limit(tmp_path):
    rows = [{"id": f"m{i}", "kind": None, "prompt": f"What is {i} + 1?", "reference": str(i + 1)} for i in range(5)]
    rows[1]["reference"] = ""  # a math row needs its reference
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "q.parquet")
    queries, counts = load_query_file(str(tmp_path / "q.parquet"), "math", limit=3, quarantine=tmp_path / "bad.jsonl")
    # stops reading at the limit: rows 1..4 read, one of them bad, row 5 never read
    assert [q["id"] for q in queries] == ["m0", "m2", "m3"]
    assert counts == {"read": 4, "used": 3, "quarantined": 1, "by_kind": {"math": 3}}
    assert json.loads((tmp_path / "bad.jsonl").read_text())["where"] == f"{tmp_path / 'q.parquet'}:row 2"


def test_missing_or_empty_files_fail_naming_them(tmp_path):
    cfg = run_preset("tiny")
    cfg = dataclasses.replace(cfg, pts=dataclasses.replace(cfg.pts, queries_file=str(tmp_path / "nope.jsonl")))
    with pytest.raises(MissingInput, match="nope.jsonl is not a file"):
        check_queries_file(cfg, tmp_path, {})
    path = _jsonl(tmp_path / "bad.jsonl", [BAD[1][0]])
    with pytest.raises(MissingInput, match="no valid query .*must be one letter"):
        load_query_file(path, "math", 10, tmp_path / "q.jsonl")
    with pytest.raises(ConfigError, match="pts.queries_kind='essay'"):
        PTSConfig(queries_kind="essay")


def test_without_a_file_the_toy_domain(tmp_path):
    cfg = run_preset("tiny")
    queries, counts = pts_queries(cfg, tmp_path)
    assert len(queries) == cfg.pts.queries == counts["used"] == counts["read"] and counts["quarantined"] == 0
    assert {q["kind"] for q in queries} == {"toy"} and counts["by_kind"] == {"toy": cfg.pts.queries}
    # the model sees the bare question, as SFT trains it
    assert [q["question"] for q in queries] == [p["question"] for p in make_problems(cfg.pts.queries, cfg.seed + 1, cfg.arith)]
    tok = phi4_tokenizer()
    oracle, answer = query_oracle(queries[0], tok), queries[0]["item"]["reference"]
    assert oracle(tok.encode(f"The answer is {answer}.")) and not oracle(tok.encode(f"The answer is {answer}1."))


def test_each_kind_judges_a_rollout_as_eval_grades_it(tmp_path):
    path = _jsonl(tmp_path / "q.jsonl", [json.dumps(g) for g in GOOD])
    math, choice, code = load_query_file(path, "math", 10, tmp_path / "bad.jsonl")[0]
    tok = phi4_tokenizer()

    def judge(q, text):
        return query_oracle(q, tok)(tok.encode(text))
    assert judge(math, "2 + 4 = 6, so \\boxed{6}") and not judge(math, "\\boxed{7}")
    assert judge(choice, "The answer is (A).") and not judge(choice, "The answer is (B).")
    assert judge(code, "```python\ndef f():\n    return 4\n```")
    assert not judge(code, "```python\ndef f():\n    return 5\n```") and not judge(code, "no code")


def test_the_stage_key_follows_the_file_contents(tmp_path):
    stage = Stage("s", "test", run=lambda ctx: StageResult({}), sections=("pts",), files=lambda cfg: [cfg.pts.queries_file])
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(GOOD[1]) + "\n")
    cfg = run_preset("tiny")
    cfg = dataclasses.replace(cfg, pts=dataclasses.replace(cfg.pts, queries_file=str(path)))
    k1 = stage_key(stage, cfg, tmp_path)
    assert stage_key(stage, cfg, tmp_path) == k1
    path.write_text(json.dumps(GOOD[2]) + "\n")  # same name, new queries: a new key
    assert stage_key(stage, cfg, tmp_path) != k1
