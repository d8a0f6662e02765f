"""Pretraining on Ray Train for real: FSDP2 over 2 gloo workers, DCP checkpoints, exact resume."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from actors.train.trainer import run_training
from phi4ray.model.config import model_preset
from phi4ray.model.decoder import build_model
from phi4ray.model.hf import export_hf, import_hf
from phi4ray.model.phi4_tokenizer import phi4_tokenizer
from phi4ray.train.jobs import TrainJob, prepare_checkpoints, resume_key
from phi4ray.train.metrics import read_metrics
from phi4ray.train.step import SequenceLoader, TrainConfig

SEQ = 32


def _write_rows(path, n=96, seed=0):
    """Packed rows with learnable structure: each document repeats a short random pattern."""
    rng = np.random.default_rng(seed)
    rows, docs = [], []
    for i in range(n):
        pat = rng.integers(0, 300, size=rng.integers(3, 7))
        rows.append(np.tile(pat, SEQ)[:SEQ + 1].astype(np.int32))
        cut = rng.integers(5, SEQ)  # two documents per row: attention must not cross the cut
        docs.append(np.where(np.arange(SEQ + 1) < cut, 2 * i, 2 * i + 1).astype(np.int32))
    path.mkdir(parents=True)
    # three files of different sizes, one row per row group: the reader can decode exactly a
    # rank's own rows, and the shuffle window spans files
    cuts = [0, n // 2, n // 2 + n // 3, n]
    for k in range(3):
        sl = slice(cuts[k], cuts[k + 1])
        pq.write_table(pa.table({"tokens": rows[sl], "doc_ids": docs[sl]}), path / f"part-{k}.parquet",
                       row_group_size=1)
    return path


def _job(run_dir, tokens, steps=12, **kw):
    tc = TrainConfig(seq_len=SEQ, batch_size=8, micro_batch_size=2, steps=steps, checkpoint_every=4, log_every=2,
                     warmup_steps=2, lr=1e-2)
    return TrainJob("pretrain", model_preset("tiny").replace(n_layers=2, max_seq_len=SEQ), tc, str(tokens),
                    str(run_dir), **kw)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return _write_rows(tmp_path_factory.mktemp("tok") / "tokens")


@pytest.fixture(scope="module")
def clean_run(ray_cluster, tokens, tmp_path_factory):
    """One uninterrupted 2-worker run, read by the tests below (the interrupted run compares with it)."""
    run_dir = tmp_path_factory.mktemp("clean")
    return run_dir, run_training(_job(run_dir, tokens), num_workers=2)


@pytest.mark.ray
def test_fsdp_pretrain_learns_and_exports(clean_run):
    tmp_path, result = clean_run
    assert result.error is None
    m = read_metrics(tmp_path, "pretrain")
    assert [x["step"] for x in m] == [2, 4, 6, 8, 10, 12] and all(x["world_size"] == 2 for x in m)
    assert m[-1]["loss"] < 0.8 * m[0]["loss"], [x["loss"] for x in m]
    # throughput: the tokens of the steps since the last line over the wall time between the lines
    # (every token of the 8 x 32 rows trains in pretraining), and its FLOPs split over the workers
    assert all(x["step_tokens"] == 8 * SEQ for x in m)
    for before, x in zip(m, m[1:]):
        assert x["tokens_per_s"] == pytest.approx(2 * 8 * SEQ / (x["time"] - before["time"]), rel=0.02), (before, x)
    flops = model_preset("tiny").replace(n_layers=2, max_seq_len=SEQ).flops_per_token(SEQ)
    assert all(x["tflops_per_worker"] == pytest.approx(flops * x["tokens_per_s"] / 2 / 1e12, rel=1e-9) for x in m)
    model = import_hf(tmp_path / "models" / "pretrain")
    assert model.cfg.n_layers == 2 and torch.isfinite(model.tok_embeddings.weight).all()
    assert (tmp_path / "ray_train" / "pretrain" / "step_000012" / "trainer_state.json").is_file()
    # each worker read its own rows and nothing else: half of every batch, one row group per row
    stats = [json.loads(p.read_text()) for p in sorted((tmp_path / "checkpoints/pretrain/reader").glob("rank-*.json"))]
    assert [s["rank"] for s in stats] == [0, 1]
    assert all(s["rows_taken"] == s["rows_decoded"] == 12 * 8 // 2 for s in stats), stats
    # more steps after a finished run train on from the last checkpoint: tests/test_stage_resume.py


@pytest.mark.ray
def test_worker_failure_resumes_exactly_from_checkpoint(clean_run, tokens, tmp_path):
    """A failure after step 5 restarts from the step-4 checkpoint (model, optimizer, data position,
    RNG); the loss curve and the final weights equal an uninterrupted run's."""
    clean = clean_run[0]
    broken = tmp_path / "broken"
    result = run_training(_job(broken, tokens, fail_once_at_step=5), num_workers=2)
    assert result.error is None
    assert (broken / "checkpoints" / "pretrain" / "injected_failure_5").exists()
    a = {x["step"]: x["loss"] for x in read_metrics(clean, "pretrain")}
    b = {}
    for x in read_metrics(broken, "pretrain"):
        b.setdefault(x["step"], []).append(x["loss"])
    assert b[2] == [a[2]] and b[4] == [a[4]]     # before the failure
    assert len(b[6]) == 1                        # steps 5-6 redone once, not logged twice
    for step in (6, 8, 10, 12):
        assert b[step][0] == pytest.approx(a[step], rel=1e-5, abs=1e-6)
    wa, wb = import_hf(clean / "models" / "pretrain").state_dict(), import_hf(broken / "models" / "pretrain").state_dict()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_rows_of_wrong_length_are_refused(tokens):
    with pytest.raises(ValueError, match="train.seq_len=16"):
        SequenceLoader.from_shards(str(tokens), 16, batch_size=8)


# --- no Ray needed: when a checkpoint may be resumed -----------------------------------------------
def test_changed_job_moves_checkpoints_aside_and_longer_steps_keep_them(tokens, tmp_path):
    job = _job(tmp_path, tokens)
    assert prepare_checkpoints(job) == []
    step = tmp_path / "ray_train" / "pretrain" / "step_000004"
    step.mkdir()
    metrics = tmp_path / "checkpoints" / "pretrain" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"step": 4}\n')
    # the same job again (a rerun after a crash), fault injection, a longer or re-scheduled run: kept
    for same in (job, _job(tmp_path, tokens, fail_once_at_step=3), _job(tmp_path, tokens, steps=40),
                 dataclasses.replace(job, train=dataclasses.replace(job.train, lr=1e-3, warmup_steps=5,
                                                                    checkpoint_every=8, micro_batch_size=4))):
        assert prepare_checkpoints(same) == []
        assert step.exists() and metrics.exists()
    # another model shape: moved aside with the metrics, never deleted
    other = dataclasses.replace(job, model=job.model.replace(n_layers=3))
    moved = prepare_checkpoints(other)
    assert not step.exists() and not metrics.exists()
    assert sorted(p.parent.name for p in moved) == ["checkpoints", "ray_train"]
    assert all(p.name.startswith("pretrain.stale-") for p in moved)
    stale_ckpts = next(p for p in moved if p.parent.name == "ray_train")
    assert (stale_ckpts / "step_000004").is_dir() and list((tmp_path / "checkpoints").glob("pretrain.stale-*"))
    assert (next(p for p in moved if p.parent.name == "checkpoints") / "metrics.jsonl").read_text() == '{"step": 4}\n'


def test_resume_key_follows_data_and_starting_model_not_schedule(tokens, tmp_path):
    base = tmp_path / "base"
    export_hf(build_model(model_preset("tiny").replace(n_layers=2, max_seq_len=SEQ), seed=0), base, phi4_tokenizer())
    job = _job(tmp_path, tokens, init_from=str(base))
    key = resume_key(job)
    for same in (_job(tmp_path, tokens, steps=99, init_from=str(base)),
                 dataclasses.replace(job, train=dataclasses.replace(job.train, lr=5.0, log_every=1, dtype="bfloat16"))):
        assert resume_key(same) == key
    for changed in (dataclasses.replace(job, train=dataclasses.replace(job.train, batch_size=4)),
                    dataclasses.replace(job, train=dataclasses.replace(job.train, seed=1)),
                    dataclasses.replace(job, train=dataclasses.replace(job.train, weight_decay=0.0)),
                    dataclasses.replace(job, model=job.model.replace(rope_theta=1e5))):
        assert resume_key(changed) != key
    # the same rows in another folder: the same data; other rows under the same name: not
    copy = _write_rows(tmp_path / "copy" / "tokens")
    assert resume_key(dataclasses.replace(job, tokens_dir=str(copy)))["data"] == key["data"]
    other = _write_rows(tmp_path / "other" / "tokens", seed=1)
    assert resume_key(dataclasses.replace(job, tokens_dir=str(other)))["data"] != key["data"]
    # another starting model (the previous stage trained longer): another key
    export_hf(build_model(model_preset("tiny").replace(n_layers=2, max_seq_len=SEQ), seed=1), base, phi4_tokenizer())
    assert resume_key(job)["init_from"] != key["init_from"]


def test_checkpoint_past_the_new_end_is_moved_aside(tokens, tmp_path):
    prepare_checkpoints(_job(tmp_path, tokens))
    (tmp_path / "ray_train" / "pretrain" / "step_000012").mkdir()
    assert prepare_checkpoints(_job(tmp_path, tokens, steps=12)) == []
    assert prepare_checkpoints(_job(tmp_path, tokens, steps=8))  # cannot untrain: start fresh
    assert not (tmp_path / "ray_train" / "pretrain" / "step_000012").exists()
