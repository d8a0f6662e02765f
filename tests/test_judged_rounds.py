"""Judge-guided post-training data without Ray: DPO round 2's and SFT best-of-N's prompts (a query
file with quarantine, or the toy domain's), the oracle their responses are graded by, judged pairs
and best-of-N over scripted policies and judges, and the stages' config checks and off switch. The
stages on a real fleet and Ray Train: tests/test_cli.py's end-to-end run (slow tier)."""
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from actors.posttrain import sft_stage
from actors.posttrain.dpo_stage import ROUND1, ROUND2, run_round2
from phi4ray.posttrain.judge import Candidate
from phi4ray.posttrain.judge_prompts import as_prompt, best_of_n_queries, grade, judge_queries
from phi4ray.posttrain.judged_pairs import build_judged_pairs
from phi4ray.posttrain.judged_sft import best_of_n_sft
from phi4ray.presets import run_preset
from phi4ray.run.errors import ConfigError, MissingInput
from phi4ray.run.paths import MODEL_STAGES

CHOICE = {"id": "q1", "kind": "choice", "prompt": "Which is prime?\n\nA. 97\nB. 91", "reference": "A",
          "choices": ["97", "91"]}


def _cfg(**dpo):
    cfg = run_preset("tiny")
    return dataclasses.replace(cfg, dpo=dataclasses.replace(cfg.dpo, **dpo))


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_prompts_file_quarantines_bad_rows_and_counts_add_up(tmp_path):
    f = _write(tmp_path / "q.jsonl", [CHOICE, "{not json", {**CHOICE, "id": "q2", "reference": ""},
                                      {**CHOICE, "id": "q3"}, {**CHOICE, "id": "q1"}])
    queries, counts = judge_queries(_cfg(judge_prompts=10, judge_prompts_file=str(f)), tmp_path / "out")
    assert [q["id"] for q in queries] == ["q1", "q3"]
    assert counts["read"] == 5 == counts["used"] + counts["quarantined"]
    bad = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert [b["where"].rsplit(":", 1)[1] for b in bad] == ["2", "3", "5"]
    assert "repeats" in bad[2]["reason"]


def test_prompts_file_stops_at_judge_prompts_and_errors_name_the_option(tmp_path):
    f = _write(tmp_path / "q.jsonl", [{**CHOICE, "id": f"q{i}"} for i in range(6)])
    queries, counts = judge_queries(_cfg(judge_prompts=2, judge_prompts_file=str(f)), tmp_path / "out")
    assert len(queries) == 2 and counts["read"] == 2  # streamed: reading stops at the limit
    with pytest.raises(MissingInput, match="dpo.judge_prompts_file"):
        judge_queries(_cfg(judge_prompts=2, judge_prompts_file=str(tmp_path / "nope.jsonl")), tmp_path / "out")
    with pytest.raises(MissingInput, match="dpo.judge_prompts_file: .*nope.jsonl"):
        ROUND2.check(_cfg(judge_prompts=2, judge_prompts_file=str(tmp_path / "nope.jsonl")), tmp_path, {})


def test_toy_prompts_are_drawn_apart_from_pts_and_the_oracle_grades_by_kind(tmp_path):
    cfg = _cfg(judge_prompts=6)
    queries, counts = judge_queries(cfg, tmp_path)
    assert counts == {"read": 6, "used": 6, "quarantined": 0} and {q["kind"] for q in queries} == {"toy"}
    from phi4ray.posttrain.queries import pts_queries
    pts_ids = {q["question"] for q in pts_queries(dataclasses.replace(cfg, pts=dataclasses.replace(cfg.pts, queries=64)),
                                                  tmp_path)[0]}
    assert not pts_ids >= {q["question"] for q in queries}  # another draw than PTS's
    from phi4ray.evals.schema import EvalItem
    from phi4ray.posttrain.queries import as_query
    choice = as_prompt(as_query(EvalItem.from_json(CHOICE)))
    assert grade("The answer is (A).", choice["answer"]) is True
    assert grade("The answer is (B).", choice["answer"]) is False


class _Policy:
    """Scripted responses: a right and a wrong answer to every choice question."""
    model_id = "scripted"

    def __init__(self):
        from phi4ray.model.tokenizer import tokenizer_for
        self.tok = tokenizer_for(None)

    async def respond(self, prompt_ids, question, n=None):
        return [Candidate(self.model_id, self.tok.encode(t), t, "stop")
                for t in ("The answer is (A).", "The answer is (B).")]


async def _judge(prompt, guide=None):
    return "Accuracy: 3\nStyle: 3\nDetail: 3"


def test_judged_pairs_on_a_query_file_are_decided_by_its_oracle(tmp_path):
    from phi4ray.evals.schema import EvalItem
    from phi4ray.posttrain.queries import as_query
    prompts = [as_prompt(as_query(EvalItem.from_json({**CHOICE, "id": f"q{i}"}))) for i in range(3)]
    rep = build_judged_pairs(prompts, [_Policy()], _judge, tmp_path, oracle=grade)
    assert rep["pairs"] == 3 and rep["decided_by"] == {"oracle": 3, "judge": 0}
    rows = pq.read_table(tmp_path / "pairs.parquet").to_pylist()
    assert {r["chosen_text"] for r in rows} == {"The answer is (A)."}  # the judge scored both alike


def test_round2_is_its_own_stage_after_round1_with_its_own_model():
    assert MODEL_STAGES[:2] == ("dpo2", "dpo")  # serve and the synthesis teacher take round 2's model first
    assert ROUND2.reads == ("dpo",) and "dpo.judge_prompts" not in ROUND1.sections
    assert "dpo" in ROUND2.sections  # its judge settings are part of round 2's key only


def test_round2_off_records_a_skip_without_starting_anything(tmp_path):
    ctx = SimpleNamespace(run_dir=tmp_path, cfg=_cfg(judge_prompts=0), fleet=None, cluster=None)
    result = run_round2(ctx)
    assert result.counts == {"train_pairs": 0, "heldout_pairs": 0} and "round 2 is off" in result.outputs["skipped"]
    with pytest.raises(MissingInput, match="neither dpo nor sft"):
        run_round2(SimpleNamespace(run_dir=tmp_path, cfg=_cfg(judge_prompts=2), fleet=None, cluster=None))


@pytest.mark.parametrize("change, needle", [
    ({"judge_policies": ("sft", "sft")}, "name each policy once"),
    ({"judge_policies": ("dpo",)}, r"round-1 model \(dpo\) always answers"),
    ({"judge_max_tokens": -1}, "judge_max_tokens=-1"),
])
def test_bad_round2_config_names_the_field(change, needle):
    with pytest.raises(ConfigError, match=needle):
        _cfg(**change)


def _sft_cfg(**sft):
    cfg = run_preset("tiny")
    return dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, **sft))


def test_best_of_n_keeps_the_best_answer_the_oracle_allows(tmp_path):
    """The judge rates the wrong answer higher; the oracle's accuracy outranks it, and a prompt
    whose every answer is wrong is skipped as `incorrect` rather than taught."""
    from phi4ray.evals.schema import EvalItem
    from phi4ray.posttrain.queries import as_query

    class Confident(_Policy):
        async def respond(self, prompt_ids, question, n=None):
            texts = ("The answer is (B).", "The answer is (A).") if "97" in question else ("The answer is (B).",) * 2
            return [Candidate(self.model_id, self.tok.encode(t), t, "stop") for t in texts]

    async def judge(prompt, guide=None):
        return "Accuracy: 5\nStyle: 5\nDetail: 5" if "(B)" in prompt.split("[Response]")[-1] else \
            "Accuracy: 2\nStyle: 2\nDetail: 2"

    other = {**CHOICE, "id": "q2", "prompt": "Which is prime?\n\nA. 89\nB. 91"}
    prompts = [as_prompt(as_query(EvalItem.from_json(q))) for q in (CHOICE, other)]
    rep = best_of_n_sft(prompts, Confident(), judge, 2, tmp_path / "bon.jsonl", oracle=grade)
    assert rep["prompts_in"] == 2 == rep["kept"] + sum(rep["skipped"].values())
    assert rep["kept"] == 1 and rep["skipped"] == {"incorrect": 1}
    row = json.loads((tmp_path / "bon.jsonl").read_text())
    assert row["query_id"] == "q1" and row["messages"][1]["content"] == "The answer is (A)."


def test_best_of_n_prompts_and_config(tmp_path):
    queries, counts = best_of_n_queries(_sft_cfg(best_of_n=2, best_of_n_prompts=5), tmp_path)
    assert counts["used"] == 5 and len({q["id"] for q in queries}) == 5
    judge_ids = {q["question"] for q in judge_queries(_cfg(judge_prompts=5), tmp_path)[0]}
    assert {q["question"] for q in queries} != judge_ids  # its own draw
    with pytest.raises(ConfigError, match="best_of_n=1"):
        _sft_cfg(best_of_n=1)
    missing = _sft_cfg(best_of_n=2, best_of_n_file=str(tmp_path / "nope.jsonl"))
    with pytest.raises(MissingInput, match="sft.best_of_n_file"):
        sft_stage.STAGE.check(missing, tmp_path, {})
    sft_stage.STAGE.check(_sft_cfg(best_of_n=0, best_of_n_file=str(tmp_path / "nope.jsonl")), tmp_path, {})  # off: unread
    f = _write(tmp_path / "q.jsonl", [CHOICE])
    assert sft_stage.STAGE.files(_sft_cfg(best_of_n=2, best_of_n_file=str(f))) == [str(f)]
