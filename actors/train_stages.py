"""Stages `pretrain` and `midtrain`: the Ray Train trainer on the run's token shards.

pretrain: from RUN/models/init on RUN/tokens at data.seq_len.
midtrain: from RUN/models/pretrain on RUN/tokens_midtrain (30% long documents, 70% recall of the
pretraining mixture) at data.seq_len x midtrain.context_multiplier, RoPE base midtrain.rope_theta.
Each writes RUN/models/<stage> (HF layout), DCP checkpoints under RUN/ray_train/<stage>, metrics
under RUN/checkpoints/<stage>, and a manifest. A completed stage is a no-op; an interrupted one
resumes from its last checkpoint.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from actors.ray_session import ray_session
from actors.trainer import TrainJob, plot_loss, read_metrics, run_training
from phi4ray import manifest
from phi4ray.presets import RunConfig


def train_stage(run_dir: Path, cfg: RunConfig, stage: str, job: TrainJob, inputs: dict,
                evaluate: Callable[[], dict] | None = None) -> dict:
    """Run one training stage to completion and write its manifest; `evaluate` (after training)
    adds its figures to the manifest's counts (SFT: held-out loss; DPO: margins and accuracy)."""
    if manifest.is_complete(run_dir, stage, cfg):
        return manifest.read_manifest(run_dir, stage)
    t0 = time.time()
    with ray_session(min_cpus=4):
        result = run_training(job, num_workers=cfg.num_workers, use_gpu=cfg.serve.device == "gpu")
    if result.error:
        raise RuntimeError(f"{stage} failed: {result.error}")
    metrics = read_metrics(run_dir, stage)
    last = metrics[-1]
    plot = plot_loss(run_dir, stage)
    manifest.write_manifest(
        run_dir, stage, cfg, inputs=inputs,
        outputs={"model": str(Path(run_dir) / "models" / stage), "checkpoint": str(result.checkpoint.path),
                 "metrics": str(Path(run_dir) / "checkpoints" / stage / "metrics.jsonl"), "loss_plot": str(plot)},
        counts={"steps": last["step"], "final_loss": last["loss"], "first_loss": metrics[0]["loss"],
                "tokens": job.train.steps * job.train.batch_size * job.train.seq_len,
                "tokens_per_s": sum(m["tokens_per_s"] for m in metrics) / len(metrics),
                **(evaluate() if evaluate else {})},
        timings={"train_s": round(time.time() - t0, 1)},
    )
    return manifest.read_manifest(run_dir, stage)


def run_pretrain(run_dir: Path, cfg: RunConfig) -> dict:
    run_dir = Path(run_dir)
    tc = dataclasses.replace(cfg.pretrain, seq_len=cfg.data.seq_len)  # the packed rows decide it
    job = TrainJob("pretrain", cfg.model, tc, str(run_dir / "tokens"), str(run_dir),
                   init_from=str(run_dir / "models" / "init"))
    return train_stage(run_dir, cfg, "pretrain", job, {"tokens": job.tokens_dir, "init_from": job.init_from})


def post_midtrain_model(cfg: RunConfig):
    """The model config from midtraining on (SFT and DPO keep midtraining's RoPE base)."""
    return cfg.model.replace(rope_theta=cfg.midtrain.rope_theta)


def run_midtrain(run_dir: Path, cfg: RunConfig) -> dict:
    from actors.tokenize import midtrain_mixture_for_run, run_tokenize

    run_dir = Path(run_dir)
    m = cfg.midtrain
    seq_len = cfg.data.seq_len * m.context_multiplier
    if not manifest.is_complete(run_dir, "midtrain", cfg):  # run_tokenize brings its own Ray
        mix = midtrain_mixture_for_run(run_dir, seq_len=seq_len, pretrain_seq_len=cfg.data.seq_len,
                                       seed=cfg.seed, long_share=m.long_share,
                                       builtin_max_docs=cfg.data.builtin_max_docs)
        run_tokenize(run_dir, mix, out_name="tokens_midtrain", manifest_stage="tokenize_midtrain")
    model = post_midtrain_model(cfg)  # same weights, longer context, new RoPE base
    tc = dataclasses.replace(m.train, seq_len=seq_len)
    job = TrainJob("midtrain", model, tc, str(run_dir / "tokens_midtrain"), str(run_dir),
                   init_from=str(run_dir / "models" / "pretrain"))
    return train_stage(run_dir, cfg, "midtrain", job, {"tokens": job.tokens_dir, "init_from": job.init_from,
                                                  "seq_len": seq_len, "rope_theta": m.rope_theta})
