"""Pretraining on Ray Train for real: FSDP2 over 2 gloo workers, DCP checkpoints, exact resume."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from actors.trainer import TrainJob, read_metrics, run_training
from phi4ray.config import model_preset
from phi4ray.hf import import_hf
from phi4ray.train import TrainConfig

pytestmark = pytest.mark.ray
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
    pq.write_table(pa.table({"tokens": rows, "doc_ids": docs}), path / "part-0.parquet")
    return path


def _job(run_dir, tokens, **kw):
    tc = TrainConfig(seq_len=SEQ, batch_size=8, micro_batch_size=2, steps=12, checkpoint_every=4, log_every=2,
                     warmup_steps=2, lr=1e-2)
    return TrainJob("pretrain", model_preset("tiny").replace(n_layers=2, max_seq_len=SEQ), tc, str(tokens),
                    str(run_dir), **kw)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return _write_rows(tmp_path_factory.mktemp("tok") / "tokens")


def test_fsdp_pretrain_learns_and_exports(ray_cluster, tokens, tmp_path):
    result = run_training(_job(tmp_path, tokens), num_workers=2)
    assert result.error is None
    m = read_metrics(tmp_path, "pretrain")
    assert [x["step"] for x in m] == [2, 4, 6, 8, 10, 12] and all(x["world_size"] == 2 for x in m)
    assert m[-1]["loss"] < 0.8 * m[0]["loss"], [x["loss"] for x in m]
    assert all(x["tokens_per_s"] > 0 and x["tflops_per_worker"] > 0 for x in m)
    model = import_hf(tmp_path / "models" / "pretrain")
    assert model.cfg.n_layers == 2 and torch.isfinite(model.tok_embeddings.weight).all()
    assert (tmp_path / "ray_train" / "pretrain" / "step_000012" / "trainer_state.json").is_file()


def test_worker_failure_resumes_exactly_from_checkpoint(ray_cluster, tokens, tmp_path):
    """A failure after step 5 restarts from the step-4 checkpoint (model, optimizer, data position,
    RNG); the loss curve and the final weights equal an uninterrupted run's."""
    clean = tmp_path / "clean"
    run_training(_job(clean, tokens), num_workers=2)
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


def test_rows_of_wrong_length_are_refused(ray_cluster, tokens, tmp_path):
    from actors.trainer import load_rows

    with pytest.raises(ValueError, match="train.seq_len=16"):
        load_rows(str(tokens), 16)


def test_changed_job_starts_fresh_instead_of_resuming(tmp_path):
    from actors.trainer import _fresh_if_changed

    job = _job(tmp_path, tmp_path / "tokens")
    _fresh_if_changed(job)
    step = tmp_path / "ray_train" / "pretrain" / "step_000004"
    step.mkdir()
    _fresh_if_changed(job)  # the same job again (a rerun after a crash): its checkpoints stay
    _fresh_if_changed(_job(tmp_path, tmp_path / "tokens", fail_once_at_step=3))
    assert step.exists()
    import dataclasses

    _fresh_if_changed(dataclasses.replace(job, train=dataclasses.replace(job.train, lr=1e-3)))
    assert not step.exists()
