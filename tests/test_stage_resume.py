"""A longer `pretrain.steps` after a complete run resumes from the last checkpoint: the stage's key
changes (so it runs again), the trainer finds a checkpoint of the same training cut at another
length, and only the new steps run. Real init, tokenize and Ray Train stages on one cluster."""
from __future__ import annotations

import json

import pytest

from actors.context import RunContext
from actors.data import tokenize
from actors.train import pretrain_stages as train_stages
from phi4ray.model import init_model
from phi4ray.presets import run_preset
from phi4ray.run.overrides import apply_overrides
from phi4ray.run.stage import run_stage, stage_key

# slow tier (~60 s): the default tier resumes a training job from its checkpoint in
# tests/test_trainer.py; this one adds the stage's key and a second init/tokenize/pretrain round
pytestmark = [pytest.mark.slow, pytest.mark.ray]

SMALL = ["model.n_layers=1", "model.dim=64", "model.n_heads=2", "model.n_kv_heads=1", "model.ffn_dim=128",
         "data.seq_len=32", "data.total_tokens=4000", "data.builtin_max_docs=6", "pretrain.batch_size=4",
         "pretrain.micro_batch_size=2", "pretrain.warmup_steps=1", "pretrain.checkpoint_every=2",
         "pretrain.log_every=1"]


def _metrics(run_dir):
    lines = (run_dir / "checkpoints" / "pretrain" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_raising_pretrain_steps_resumes_from_the_last_checkpoint(tmp_path):
    cfg2 = apply_overrides(run_preset("tiny"), [*SMALL, "pretrain.steps=2"])
    cfg4 = apply_overrides(cfg2, ["pretrain.steps=4"])
    with RunContext.local(tmp_path, cfg2, hold=True) as ctx:
        for stage in (init_model.STAGE, tokenize.STAGE, train_stages.PRETRAIN):
            assert run_stage(stage, ctx)[1]
        first = _metrics(tmp_path)
        midtrain_key = stage_key(train_stages.MIDTRAIN, cfg4, tmp_path)
        ctx.cfg = cfg4
        assert not run_stage(tokenize.STAGE, ctx)[1]     # pretrain.steps is not tokenize's business
        m, ran = run_stage(train_stages.PRETRAIN, ctx)
    assert ran and m["counts"]["steps"] == 4
    assert [r["step"] for r in first] == [1, 2]
    after = _metrics(tmp_path)
    assert [r["step"] for r in after] == [1, 2, 3, 4]
    assert after[:2] == first                             # steps 1-2 were not trained again
    assert (tmp_path / "ray_train" / "pretrain" / "step_000004").is_dir()  # the resumed run checkpointed
    assert not list(tmp_path.glob("ray_train/pretrain.stale-*"))  # nothing moved aside
    # and what reads pretrain is no longer current: midtraining would run again
    assert stage_key(train_stages.MIDTRAIN, cfg4, tmp_path) != midtrain_key
