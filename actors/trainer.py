"""Pretraining, midtraining, SFT and DPO on Ray Train: `TorchTrainer` workers run FSDP2 over phi4ray's model.

The per-worker loop is phi4ray.train's step plus what a cluster needs:
- checkpoints with torch.distributed.checkpoint (every rank writes its own shards; Ray Train merges
  them into one directory per report) holding model, optimizer, data-loader position and RNG;
- resume: `ray.train.get_checkpoint()` after a worker failure (FailureConfig) or a rerun of the
  same stage, on however many workers the cluster now gives (ScalingConfig(num_workers=(lo, hi)));
- metrics (loss, tokens/s, MFU) to RUN/checkpoints/<stage>/metrics.jsonl and TensorBoard;
- the final model exported in HF layout to RUN/models/<stage>.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from phi4ray.config import ModelConfig
from phi4ray.dpo import DPOConfig
from phi4ray.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class TrainJob:
    stage: str                      # "pretrain" | "midtrain" | "sft" | "dpo"
    model: ModelConfig
    train: TrainConfig
    tokens_dir: str                 # packed Parquet rows (phi4ray.packing / phi4ray.sft), or DPO pairs
    run_dir: str
    init_from: str | None = None    # HF folder to start from (the previous stage's model)
    loss_mask: bool = False         # rows carry a loss_mask column (SFT: assistant tokens only)
    dpo: DPOConfig | None = None    # set: the objective is DPO over pairs with stored reference log-probs
    # fault injection for resume tests: raise once when this step is reached (a marker file in
    # the stage dir makes it one-shot across restarts)
    fail_once_at_step: int | None = None


def _rank_world():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(t: torch.Tensor) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)


def _state_dicts(model, optimizer):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optim": osd}


def _save(ckpt_dir: str, model, optimizer, trainer_state: dict) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save(_state_dicts(model, optimizer), checkpoint_id=ckpt_dir)
    rank, _ = _rank_world()
    if rank == 0:
        Path(ckpt_dir, "trainer_state.json").write_text(json.dumps(trainer_state))


def _load(ckpt_dir: str, model, optimizer) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _state_dicts(model, optimizer)
    dcp.load(state, checkpoint_id=ckpt_dir)  # reshards to the current world size
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return json.loads(Path(ckpt_dir, "trainer_state.json").read_text())


def _export_full(model, job: TrainJob, out: Path) -> None:
    """Gather the full state on rank 0 and write the HF folder (all ranks must call this)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from phi4ray.hf import export_hf
    from phi4ray.model import Phi4

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rank, _ = _rank_world()
    if rank == 0:
        plain = Phi4(job.model)
        plain.load_state_dict({k.replace("_checkpoint_wrapped_module.", ""): v for k, v in full.items()})
        export_hf(plain, out, dtype=torch.bfloat16 if job.train.dtype == "bfloat16" else torch.float32)


def build_for_training(job: TrainJob, device: torch.device, distributed: bool):
    from phi4ray.hf import import_hf
    from phi4ray.model import build_model
    from phi4ray.parallelize import parallelize

    torch.manual_seed(job.train.seed)  # same init on every rank before sharding
    if job.init_from:
        model = import_hf(job.init_from, device=device, dtype=torch.float32)
        # the stage may change context and RoPE base (midtraining): same weights, new config
        model.cfg = job.model
    else:
        model = build_model(job.model, device=device, seed=job.train.seed)
    return parallelize(model, job.train, distributed)


def load_rows(tokens_dir: str, seq_len: int, loss_mask: bool = False) -> tuple[np.ndarray, ...]:
    """All packed rows of a token folder (phi4ray.packing's shards), checked against seq_len:
    (tokens, doc_ids) or, with loss_mask, (tokens, doc_ids, loss_mask)."""
    from phi4ray.packing import load_token_shards

    d = Path(tokens_dir)
    shards = list(load_token_shards(d.parent, d.name, loss_mask=loss_mask))
    width = seq_len + 1
    for tokens, *_ in shards:
        if tokens.shape[1] != width:
            raise ValueError(f"{tokens_dir}: rows are {tokens.shape[1]} tokens long, not {width} "
                             f"(train.seq_len={seq_len} + 1); re-run tokenize with this seq_len")
    if not sum(len(s[0]) for s in shards):
        raise ValueError(f"{tokens_dir}: no packed rows")
    return tuple(np.concatenate([s[i] for s in shards]) for i in range(len(shards[0])))


def make_data(job: TrainJob, device):
    """(loader, step function) for the job's objective; both loaders resume from state_dict()."""
    from phi4ray.train import SequenceLoader, train_step

    tc = job.train
    if job.dpo is not None:
        from phi4ray.dpo import PairLoader, dpo_step, load_pairs
        from phi4ray.tokenizer import PAD

        loader = PairLoader(load_pairs(job.tokens_dir), tc.batch_size, seed=tc.seed)
        return loader, lambda model, opt, batch, step, all_reduce: dpo_step(
            model, opt, batch, step, job.dpo, PAD, device, all_reduce)
    rows = load_rows(job.tokens_dir, tc.seq_len, loss_mask=job.loss_mask)
    loader = SequenceLoader(*rows[:2], tc.batch_size, seed=tc.seed, loss_mask=rows[2] if job.loss_mask else None)
    return loader, lambda model, opt, batch, step, all_reduce: train_step(model, opt, batch, step, tc, all_reduce)


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    from ray.train import Checkpoint

    from phi4ray.train import make_optimizer, peak_flops

    job: TrainJob = config["job"]
    tc = job.train
    rank, world = _rank_world()
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    model = build_for_training(job, device, distributed=world > 1)
    optimizer = make_optimizer(model, tc)
    loader, step_fn = make_data(job, device)
    micro = tc.micro_batch_size
    tc.grad_accum_steps(world)  # fails early, naming the sizes, if the batch does not split

    step = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = _load(d, model, optimizer)
        step = state["step"]
        loader.load_state_dict(state["loader"])
        torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))

    stage_dir = Path(job.run_dir) / "checkpoints" / job.stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = stage_dir / "metrics.jsonl"
    writer = None
    if rank == 0:
        try:  # tensorboardX comes with Ray; metrics.jsonl always has everything anyway
            from tensorboardX import SummaryWriter

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
                   "tokens_per_s": tps, "world_size": world, "tflops_per_worker": flops_tok * tps / world / 1e12,
                   "mfu": (flops_tok * tps / world / peak) if peak else None, "time": time.time(),
                   **{k: v for k, v in out.items() if k.startswith("reward_")}}
        t_last, tok_since = time.perf_counter(), 0
        if rank == 0:
            with open(metrics_file, "a") as f:
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
    _export_full(model, job, Path(job.run_dir) / "models" / job.stage)
    if writer:
        writer.close()


def run_training(job: TrainJob, num_workers: int | tuple[int, int] = 2, use_gpu: bool = False,
                 max_failures: int = 3, resources_per_worker: dict | None = None,
                 resize_check_s: float = 60.0):
    """Fit on Ray Train. Rerunning the same stage in the same run dir resumes from its last
    checkpoint; a finished stage is a no-op at the pipeline level (its manifest).

    num_workers=(lo, hi) is elastic: training runs on as many workers as the cluster holds, resumes
    on fewer from the last checkpoint when a node goes, and grows again (checked every
    resize_check_s) when nodes come back."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    _fresh_if_changed(job)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, elastic_resize_monitor_interval_s=resize_check_s,
            resources_per_worker=resources_per_worker or ({"CPU": 4, "GPU": 1} if use_gpu else {"CPU": 1})),
        run_config=RunConfig(name=job.stage, storage_path=str(Path(job.run_dir).resolve() / "ray_train"),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    return trainer.fit()


def _fresh_if_changed(job: TrainJob) -> None:
    """Resume only what this job started: checkpoints of the same stage made under another
    job (another config, data or starting model) are removed, with their metrics, first."""
    import shutil

    key = json.dumps(dataclasses.asdict(dataclasses.replace(job, fail_once_at_step=None)), sort_keys=True, default=str)
    ckpts = Path(job.run_dir).resolve() / "ray_train" / job.stage
    marker = ckpts / "phi4ray_job.json"
    if ckpts.exists() and (not marker.exists() or marker.read_text() != key):
        print(f"{job.stage}: checkpoints in {ckpts} belong to another configuration; starting fresh")
        shutil.rmtree(ckpts)
        shutil.rmtree(Path(job.run_dir) / "checkpoints" / job.stage, ignore_errors=True)
    ckpts.mkdir(parents=True, exist_ok=True)
    marker.write_text(key)


def plot_loss(run_dir: str | Path, stage: str) -> Path | None:
    """RUN/report/loss_<stage>.png: loss against step, one colour per worker count (resizes show)."""
    metrics = read_metrics(run_dir, stage)
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    segments: list[list[dict]] = []  # contiguous runs on one worker count (a resize starts a new one)
    for m in metrics:
        if not segments or segments[-1][-1]["world_size"] != m["world_size"]:
            segments.append([])
        segments[-1].append(m)
    colors, seen = {}, set()
    for seg in segments:
        world = seg[0]["world_size"]
        colors.setdefault(world, f"C{len(colors)}")
        ax.plot([m["step"] for m in seg], [m["loss"] for m in seg], marker=".", color=colors[world],
                label=None if world in seen else f"{world} worker(s)")
        seen.add(world)
    ax.set(xlabel="step", ylabel="loss", title=f"{stage} loss")
    ax.legend()
    out = Path(run_dir) / "report" / f"loss_{stage}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def read_metrics(run_dir: str | Path, stage: str) -> list[dict]:
    p = Path(run_dir) / "checkpoints" / stage / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


__all__ = ["TrainJob", "run_training", "train_loop_per_worker", "read_metrics"]
