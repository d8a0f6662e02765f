"""Stages `pretrain` and `midtrain`: the Ray Train trainer on the run's token shards.

pretrain: from RUN/models/init on RUN/tokens at data.seq_len.
midtrain: from RUN/models/pretrain on RUN/tokens_midtrain (30% long documents, the synthesize stage's
long rows among them, 70% recall of the pretraining mixture) at data.seq_len x
midtrain.context_multiplier, RoPE base midtrain.rope_theta.
Each writes RUN/models/<stage> (HF layout), DCP checkpoints under RUN/ray_train/<stage> and metrics
under RUN/checkpoints/<stage>. An interrupted stage resumes from its last checkpoint, and so does
one rerun with more steps (phi4ray.train.jobs says when a checkpoint is kept).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from actors.data.tokenize import tokenize_mixture
from phi4ray.data.mixtures import midtrain_mixture
from phi4ray.run.stage import Stage, StageResult
from phi4ray.train.jobs import TrainJob, midtrain_job, pretrain_job, worker_split_check
from phi4ray.train.metrics import metrics_file, plot_loss, training_counts


def train_stage(ctx, job: TrainJob, inputs: dict, evaluate: Callable[[], dict] | None = None) -> StageResult:
    """Run one training job to completion on the context's Ray cluster; `evaluate` (after training)
    adds its figures to the counts (SFT: held-out loss; DPO: margins and accuracy)."""
    from actors.train.trainer import run_training  # deferred: Ray Train and torch load only when a stage trains

    t0 = time.time()
    with ctx.cluster.session(min_cpus=4):
        result = run_training(job, num_workers=ctx.cfg.num_workers, use_gpu=ctx.cfg.serve.device == "gpu")
    if result.error:
        raise RuntimeError(f"{job.stage} failed: {result.error}")
    t_train = time.time() - t0
    run_dir = Path(job.run_dir)
    plot = plot_loss(run_dir, job.stage)
    counts = training_counts(run_dir, job.stage, job.train.batch_size * job.train.seq_len)
    return StageResult(
        counts={**counts, **(evaluate() if evaluate else {})},
        outputs={"model": str(run_dir / "models" / job.stage), "checkpoint": str(result.checkpoint.path),
                 "metrics": str(metrics_file(run_dir, job.stage)), "loss_plot": str(plot)},
        inputs=inputs, timings={"train_s": round(t_train, 1)})


def run_pretrain(ctx) -> StageResult:
    job = pretrain_job(ctx.run_dir, ctx.cfg)
    return train_stage(ctx, job, {"tokens": job.tokens_dir, "init_from": job.init_from})


def run_midtrain(ctx) -> StageResult:
    # the mixture's shards carry a record of what they were made from: an interrupted midtrain
    # reuses them (and so its checkpoints) instead of tokenizing again
    tokenized = tokenize_mixture(ctx.run_dir, midtrain_mixture(ctx.run_dir, ctx.cfg), ctx.cluster,
                                 out_name="tokens_midtrain")
    job = midtrain_job(ctx.run_dir, ctx.cfg)
    result = train_stage(ctx, job, {"tokens": job.tokens_dir, "init_from": job.init_from,
                                    "seq_len": job.train.seq_len, "rope_theta": ctx.cfg.midtrain.rope_theta})
    result.counts["tokenize"] = {k: tokenized.counts[k] for k in ("sequences", "tokens_packed", "shares_achieved")}
    result.timings.update({f"tokenize_{k}": v for k, v in tokenized.timings.items()})
    return result


PRETRAIN = Stage(
    name="pretrain",
    summary="FSDP2 pretraining on Ray Train (4K context in the report)",
    run=run_pretrain,
    check=worker_split_check("pretrain"),
    sections=("pretrain", "model", "data.seq_len", "seed"),
    reads=("init", "tokenize"),
    outputs=("models/pretrain", "ray_train/pretrain", "checkpoints/pretrain"),
    headline=("steps", "first_loss", "final_loss", "tokens_per_s"),
)
MIDTRAIN = Stage(
    name="midtrain",
    summary="long-context midtraining: context x4, RoPE base 250K, 30% long / 70% recall",
    run=run_midtrain,
    check=worker_split_check("midtrain.train"),
    sections=("midtrain", "model", "data", "seed"),
    reads=("pretrain",),
    # its mixture reads the pretraining inputs (curated/synthetic or the built-in corpus) and synthetic/long
    uses=("tokenize", "curate", "synthesize"),
    outputs=("tokens_midtrain", "models/midtrain", "ray_train/midtrain", "checkpoints/midtrain"),
    headline=("steps", "first_loss", "final_loss", "tokens_per_s"),
)
STAGES = (PRETRAIN, MIDTRAIN)
