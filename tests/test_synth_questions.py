"""`synth.questions_file`: organic questions read as a stream with a quarantine, through the
plurality filter on a scripted teacher, counted in the report; the stage's check and key (no Ray)."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi4ray.data.synth.llm import ScriptedEngine
from phi4ray.data.synth.plurality import plurality_filter
from phi4ray.data.synth.runner import LocalRunner
from phi4ray.data.synth.seeds import organic_questions, plurality_seeds
from phi4ray.run.errors import ConfigError, MissingInput
from phi4ray.run.overrides import OverrideError
from phi4ray.run.stage import check_inputs, stage_key
from tests.test_synthesize_stage import STAGE, assert_counts_add_up, config, run_local, write_curated

GOOD = [
    {"id": "q1", "question": "What is 2 + 2?", "answer": "4"},                     # the majority agrees
    {"question": "What is 3 + 1?", "answer": "Three plus one is seven. #### 7"},  # the majority overrules it
    {"id": 7, "question": "What is 5 - 1?"},                                     # no answer: still filtered
]
BAD = [
    ("{not json", "invalid JSON"),
    (json.dumps({"id": "q9", "answer": "1"}), "no question"),
    (json.dumps({"question": "   "}), "empty question"),
    (json.dumps({"question": ["What", "is", "it?"]}), "question must be a string, got list"),
    (json.dumps({"question": "What is 1 + 1?", "answer": 2}), "answer must be a string, got int"),
    (json.dumps({"id": True, "question": "What is 1 + 1?"}), "id must be a string or an integer"),
    (json.dumps({"id": "q1", "question": "Again?"}), "seed id 'organic:q1' repeats"),
    (json.dumps("What is 1 + 1?"), "a row must be an object, got str"),
]


def write_lines(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def mixed_file(path) -> str:
    """GOOD[0], a bad line, GOOD[1], a blank line, a bad row, GOOD[2]: 3 good rows, 2 bad, on lines 1-6."""
    return write_lines(path, [json.dumps(GOOD[0]), BAD[0][0], json.dumps(GOOD[1]), "", BAD[1][0], json.dumps(GOOD[2])])


def teacher(prompt: str) -> list[str]:
    """Four sampled answers: 3 + 1 and 2 + 2 get a clear majority for 4, 5 - 1 too; 9 - 1 is too easy."""
    question = prompt.split("[Question]\n", 1)[1].split("\n[End of Question]", 1)[0]
    if question == "What is 9 - 1?":
        return ["so \\boxed{8}"] * 4
    return ["Adding gives four, so \\boxed{4}"] * 3 + ["so \\boxed{5}"]


def test_three_good_rows_and_two_bad_give_three_seeds_and_a_quarantine(tmp_path):
    path = mixed_file(tmp_path / "q.jsonl")
    cfg = config(questions_file=path)
    seeds, counts = organic_questions(cfg, tmp_path / "out" / "quarantine.jsonl")
    assert counts == {"read": 5, "used": 3, "quarantined": 2}  # the blank line is no row
    assert seeds == [{"seed_id": "organic:q1", "question": GOOD[0]["question"], "source": "organic", "answer": "4"},
                     {"seed_id": "organic:q.jsonl:3", "question": GOOD[1]["question"], "source": "organic",
                      "answer": GOOD[1]["answer"]},
                     {"seed_id": "organic:7", "question": GOOD[2]["question"], "source": "organic"}]
    bad = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert [b["where"] for b in bad] == [f"{path}:2", f"{path}:5"]
    assert "invalid JSON" in bad[0]["reason"] and bad[0]["row"] == BAD[0][0]  # kept as it was
    assert bad[1]["reason"] == "no question" and bad[1]["row"] == json.loads(BAD[1][0])
    # the same file, the same seeds: their ids are the chunks' ids
    assert organic_questions(cfg, tmp_path / "again.jsonl")[0] == seeds


@pytest.mark.parametrize("line, reason", BAD)
def test_each_bad_row_is_quarantined_with_its_reason(tmp_path, line, reason):
    path = write_lines(tmp_path / "q.jsonl", [json.dumps(GOOD[0]), line])
    seeds, counts = organic_questions(config(questions_file=path), tmp_path / "bad.jsonl")
    assert [s["seed_id"] for s in seeds] == ["organic:q1"] and counts == {"read": 2, "used": 1, "quarantined": 1}
    bad = json.loads((tmp_path / "bad.jsonl").read_text())
    assert bad["where"] == f"{path}:2" and reason in bad["reason"], bad


def test_reading_stops_at_synth_seeds_and_parquet_rows_are_read_too(tmp_path):
    rows = [{"id": None if i == 2 else f"p{i}", "question": f"What is {i} + 1?" if i != 1 else "", "answer": None}
            for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "q.parquet")
    seeds, counts = organic_questions(config(seeds=3, questions_file=str(tmp_path / "q.parquet")), tmp_path / "b.jsonl")
    # rows 1-4 read (row 2's question is empty), rows 5 and 6 never: the driver holds `synth.seeds` questions
    assert [s["seed_id"] for s in seeds] == ["organic:p0", "organic:q.parquet:row 3", "organic:p3"]
    assert counts == {"read": 4, "used": 3, "quarantined": 1} and all("answer" not in s for s in seeds)


def test_a_file_without_a_valid_question_stops_the_stage(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", [BAD[1][0], BAD[2][0]])
    with pytest.raises(MissingInput, match="synth.questions_file: no valid question .*2 quarantined.*no question"):
        organic_questions(config(questions_file=path), tmp_path / "bad.jsonl")


def test_organic_seeds_come_first_then_qa_then_arithmetic(tmp_path):
    cfg = config(questions_file=mixed_file(tmp_path / "q.jsonl"))
    organic, _ = organic_questions(cfg, tmp_path / "bad.jsonl")
    qa = [{"seed_id": "web:doc0#0", "pair_index": 0, "status": "ok", "question": "Why?", "answer": "Because."}]
    assert [s["source"] for s in plurality_seeds(qa, cfg, organic)] == ["organic"] * 3 + ["qa"] + ["arith"] * 2


def test_organic_questions_through_the_plurality_filter(tmp_path):
    """The stage on a scripted teacher: organic seeds reach the plurality step, a kept row's training
    text is the majority's solution, whatever the organic answer said; read = used + quarantined."""
    write_curated(tmp_path)
    # synth.seeds=4: reading stops after the 4th good row, on line 6
    path = write_lines(tmp_path / "q.jsonl", [*(json.dumps(g) for g in GOOD), BAD[2][0], BAD[0][0],
                                              json.dumps({"id": "easy", "question": "What is 9 - 1?"}), BAD[1][0]])
    cfg = config(questions_file=path, steps="plurality", arith_questions=0)  # overrides apply in order
    m = run_local(tmp_path, cfg, LocalRunner(ScriptedEngine(teacher), "scripted"))
    rep = json.loads((tmp_path / "synthesize" / "report.json").read_text())
    quarantine = tmp_path / "synthesize" / "quarantine_questions.jsonl"
    assert rep["questions_file"] == {"path": path, "read": 6, "used": 4, "quarantined": 2,
                                     "quarantine": str(quarantine)}
    assert m["counts"]["questions_file"] == {"read": 6, "used": 4, "quarantined": 2}
    assert [json.loads(line)["where"] for line in quarantine.read_text().splitlines()] == [f"{path}:4", f"{path}:5"]
    assert rep["steps"]["plurality"]["seeds_in"] == 4 and rep["steps"]["plurality"]["dropped"] == {"too_easy": 1}
    assert_counts_add_up(tmp_path, rep)
    kept = {r["seed_id"]: r for r in pq.read_table(tmp_path / "synthetic" / "synthetic" / "plurality.parquet").to_pylist()}
    assert sorted(kept) == ["organic:7", "organic:q.jsonl:2", "organic:q1"]
    assert all(r["seed_source"] == "organic" for r in kept.values())
    replaced = kept["organic:q.jsonl:2"]
    assert replaced["text"] == "User: What is 3 + 1?\n\nAssistant: Adding gives four, so \\boxed{4}"
    meta = {sid: json.loads(r["meta"]) for sid, r in kept.items()}
    assert meta["organic:q.jsonl:2"]["organic_answer"] == GOOD[1]["answer"]
    assert {sid: (x["answer"], x["answer_source"]) for sid, x in meta.items()} == {
        "organic:q1": ("4", "organic"), "organic:q.jsonl:2": ("4", "majority_replaced_organic"),
        "organic:7": ("4", "majority")}
    assert m["inputs"]["questions_file"] == path


def test_a_missing_file_fails_in_the_stage_check_naming_the_option(tmp_path):
    cfg = config(questions_file=str(tmp_path / "nope.jsonl"))
    # before the teacher's check too: this run has no model folder, yet the file is what is named
    with pytest.raises(MissingInput, match=r"synth.questions_file: .*nope.jsonl is not a file"):
        check_inputs(STAGE, cfg, tmp_path)
    (tmp_path / "nope.jsonl").write_text(json.dumps(GOOD[0]) + "\n")
    with pytest.raises(MissingInput, match="no model folder"):  # past the file, the teacher's check runs
        check_inputs(STAGE, cfg, tmp_path)


def test_the_stage_key_follows_the_files_contents(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(GOOD[0]) + "\n")
    cfg = config(questions_file=str(path))
    k1 = stage_key(STAGE, cfg, tmp_path)
    assert stage_key(STAGE, cfg, tmp_path) == k1 and k1 != stage_key(STAGE, config(), tmp_path)
    path.write_text(json.dumps(GOOD[2]) + "\n")  # same name, new questions: a new key
    assert stage_key(STAGE, cfg, tmp_path) != k1


def test_a_questions_file_is_a_question_source_for_plurality(tmp_path):
    cfg = config(questions_file=str(tmp_path / "q.jsonl"), steps="plurality", arith_questions=0)
    assert cfg.synth.questions_file and cfg.synth.steps == ("plurality",)
    with pytest.raises((ConfigError, OverrideError), match="plurality without qa, synth.questions_file or synth.arith_questions"):
        config(steps="plurality", arith_questions=0)
    with pytest.raises((ConfigError, OverrideError), match="synth.questions_file=.* feeds the plurality step"):
        config(steps="qa", questions_file=str(tmp_path / "q.jsonl"))


@pytest.mark.parametrize("organic, source", [("#### 4", "organic"), ("2 + 2 = 4.\n#### 4", "organic"),
                                             ("so #### 5", "majority_replaced_organic")])
def test_a_gsm8k_answer_is_compared_by_its_final_number(organic, source):
    res = plurality_filter("q", organic, ["\\boxed{4}"] * 3 + ["\\boxed{5}"])
    assert (res.status, res.answer, res.answer_source) == ("ok", "4", source)
