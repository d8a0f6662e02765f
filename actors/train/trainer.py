"""Pretraining, midtraining, SFT and DPO on Ray Train: `TorchTrainer` workers run FSDP2 over phi4ray's model.

The per-worker loop is phi4ray.train.step's step plus what a cluster needs:
- checkpoints with torch.distributed.checkpoint (every rank writes its own shards; Ray Train merges
  them into one directory per report) holding model, optimizer, data-loader position and RNG;
- resume: `ray.train.get_checkpoint()` after a worker failure (FailureConfig) or a rerun of the
  same stage, on however many workers the cluster now gives (ScalingConfig(num_workers=(lo, hi)));
- metrics (loss, tokens/s, MFU) to RUN/checkpoints/<stage>/metrics.jsonl and TensorBoard;
- the final model exported in HF layout to RUN/models/<stage>.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from phi4ray.model.decoder import build_model
from phi4ray.model.hf import export_hf
from phi4ray.model.tokenizer import tokenizer_for
from phi4ray.train.dpo import PairLoader, dpo_step
from phi4ray.train.jobs import TrainJob, prepare_checkpoints
from phi4ray.train.metrics import step_progress, truncate_metrics
from phi4ray.train.parallelize import parallelize
from phi4ray.train.sharded_io import load_sharded
from phi4ray.train.step import SequenceLoader, make_optimizer, peak_flops, train_step


def _rank_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(t: torch.Tensor) -> None:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)


def _state_dicts(model, optimizer):
    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optim": osd}


def _save(ckpt_dir: str, model, optimizer, trainer_state: dict) -> None:
    dcp.save(_state_dicts(model, optimizer), checkpoint_id=ckpt_dir)
    rank, _ = _rank_world()
    if rank == 0:
        Path(ckpt_dir, "trainer_state.json").write_text(json.dumps(trainer_state))


def _load(ckpt_dir: str, model, optimizer) -> dict:
    state = _state_dicts(model, optimizer)
    dcp.load(state, checkpoint_id=ckpt_dir)  # reshards to the current world size
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return json.loads(Path(ckpt_dir, "trainer_state.json").read_text())


def _export_full(model, job: TrainJob, out: Path) -> None:
    """Stream the HF folder from the shards, one gathered tensor at a time: every rank must call
    this; rank 0 writes (phi4ray.model.hf.export_hf)."""
    export_hf(model, out, job_tokenizer(job), dtype=torch.bfloat16 if job.train.dtype == "bfloat16" else torch.float32)


def job_tokenizer(job: TrainJob):
    """The tokenizer of the model the job starts from (it trains and exports with the same ids); a
    job from a fresh model pretrains with the Phi-4 tokenizer."""
    return tokenizer_for(job.init_from)


def build_for_training(job: TrainJob, device: torch.device, distributed: bool):
    torch.manual_seed(job.train.seed)  # same init on every rank before sharding
    if job.init_from:  # meta model -> FSDP2 -> each rank reads only its rows; the stage's context and RoPE base apply
        return load_sharded(job.model, job.init_from, job.train, device, distributed)
    return parallelize(build_model(job.model, device=device, seed=job.train.seed), job.train, distributed)


def make_data(job: TrainJob, device):
    """(loader, step function) for the job's objective; both loaders resume from state_dict() and
    read only this rank's rows of the job's files (phi4ray.data.row_stream)."""
    tc = job.train
    if job.dpo is not None:
        loader = PairLoader.from_folder(job.tokens_dir, tc.batch_size, seed=tc.seed)
        pad = job_tokenizer(job).pad_id
        return loader, lambda model, opt, batch, step, all_reduce: dpo_step(
            model, opt, batch, step, job.dpo, pad, device, all_reduce)
    loader = SequenceLoader.from_shards(job.tokens_dir, tc.seq_len, tc.batch_size, seed=tc.seed,
                                        loss_mask=job.loss_mask)
    return loader, lambda model, opt, batch, step, all_reduce: train_step(model, opt, batch, step, tc, all_reduce)


def write_reader_stats(stage_dir: Path, rank: int, world: int, loader, steps: int) -> None:
    """What this rank's reader held over the attempt: RUN/checkpoints/<stage>/reader/rank-<r>.json."""
    out = stage_dir / "reader"
    out.mkdir(parents=True, exist_ok=True)
    rows = loader.rows
    (out / f"rank-{rank}.json").write_text(json.dumps({
        "rank": rank, "world_size": world, "steps": steps, "rows_taken": rows.rows_taken,
        "rows_decoded": getattr(rows, "rows_decoded", rows.rows_taken), "rows_total": loader.n_rows}))


def train_loop_per_worker(config: dict) -> None:
    job: TrainJob = config["job"]
    tc = job.train
    rank, world = _rank_world()
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    model = build_for_training(job, device, distributed=world > 1)
    optimizer = make_optimizer(model, tc)
    loader, step_fn = make_data(job, device)
    micro = tc.micro_batch_size
    tc.micro_steps(world)  # fails early, naming the sizes, if some worker would get no row

    step = start = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = _load(d, model, optimizer)
        step = start = state["step"]
        loader.load_state_dict(state["loader"])
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))

    stage_dir = job.metrics_dir
    stage_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = stage_dir / "metrics.jsonl"
    writer = None
    if rank == 0:
        truncate_metrics(metrics_path, step)  # steps past the checkpoint are trained (and logged) again
        try:  # tensorboardX comes with Ray; metrics.jsonl always has everything anyway
            from tensorboardX import SummaryWriter  # deferred: optional, and only rank 0 writes

            writer = SummaryWriter(str(stage_dir / "tensorboard"))
        except ImportError:
            writer = None
    flops_tok = job.model.flops_per_token(tc.seq_len)
    peak = peak_flops(device)
    t_last, tok_since = time.perf_counter(), 0
    while step < tc.steps:
        if job.fail_once_at_step == step and rank == 0:
            marker = stage_dir / f"injected_failure_{step}"
            if not marker.exists():
                marker.touch()
                raise RuntimeError(f"injected failure at step {step}")
        out = step_fn(model, optimizer, loader.next_batch(rank, world, micro, device), step, _all_reduce)
        step += 1
        tok_since += out["tokens"]
        if step % tc.log_every and step % tc.checkpoint_every and step != tc.steps:
            continue
        dt = time.perf_counter() - t_last
        tps = tok_since / dt
        metrics = {"step": step, "loss": out["loss"], "lr": out["lr"], "grad_norm": out["grad_norm"],
                   "step_tokens": out["tokens"],  # trained tokens of this step, all workers
                   "tokens_per_s": tps, "world_size": world, "tflops_per_worker": flops_tok * tps / world / 1e12,
                   "mfu": (flops_tok * tps / world / peak) if peak else None, "time": time.time(),
                   **{k: v for k, v in out.items() if k.startswith("reward_")}}
        t_last, tok_since = time.perf_counter(), 0
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            if writer:
                for k in ("loss", "lr", "grad_norm", "tokens_per_s", "reward_margin", "reward_accuracy"):
                    if k in metrics:
                        writer.add_scalar(f"{job.stage}/{k}", metrics[k], step)
        if step % tc.checkpoint_every == 0 or step == tc.steps:
            state = {"step": step, "loader": loader.state_dict(), "torch_rng": torch.get_rng_state().tolist()}
            with tempfile.TemporaryDirectory() as d:
                _save(d, model, optimizer, state)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d),
                                 checkpoint_dir_name=f"step_{step:06d}")
        else:
            ray.train.report(metrics)
    write_reader_stats(stage_dir, rank, world, loader, step - start)
    _export_full(model, job, Path(job.run_dir) / "models" / job.stage)
    if writer:
        writer.close()


def run_training(job: TrainJob, num_workers: int | tuple[int, int] = 2, use_gpu: bool = False,
                 max_failures: int | None = None, resources_per_worker: dict | None = None,
                 resize_check_s: float = 60.0):
    """Fit on Ray Train. Rerunning the same stage in the same run dir resumes from its last
    checkpoint when that checkpoint is of the same training (phi4ray.train.jobs.resume_key: a
    longer `train.steps` trains on from the last one; another model, data or starting model starts
    fresh, the old checkpoints moved aside); a finished stage is a no-op at the pipeline level.

    num_workers=(lo, hi) is elastic: training runs on as many workers as the cluster holds, resumes
    on fewer from the last checkpoint when a node goes, and grows again (checked every
    resize_check_s) when nodes come back."""
    prepare_checkpoints(job)  # a checkpoint of another training is moved aside, never resumed
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, elastic_resize_monitor_interval_s=resize_check_s,
            resources_per_worker=resources_per_worker or ({"CPU": 4, "GPU": 1} if use_gpu else {"CPU": 1})),
        run_config=RunConfig(name=job.stage, storage_path=str(Path(job.run_dir).resolve() / "ray_train"),
                             failure_config=FailureConfig(
                                 max_failures=job.train.max_failures if max_failures is None else max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    with step_progress(job.run_dir, job.stage, job.train.steps):
        return trainer.fit()


__all__ = ["TrainJob", "run_training", "train_loop_per_worker"]
