"""The training step, plain torch: runs under Ray Train (actors/train/trainer.py) and without Ray
(benchmarks, the lent GPU). Pretraining, midtraining and SFT share it.

Packed rows hold seq_len + 1 tokens: inputs are row[:-1], targets row[1:]; `doc_ids` keep
attention inside each document. The loss is mean cross-entropy over the target tokens whose
`loss_mask` is 1 (all of them in pretraining; assistant tokens in SFT).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from phi4ray.data.row_stream import WINDOW, ArrayRows, ParquetRows, RowOrder, fixed_width, micro_slices, passes
from phi4ray.run.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    seq_len: int = 256               # tokens per packed row the model sees
    batch_size: int = 16             # sequences per optimizer step, over all workers
    micro_batch_size: int = 4        # sequences per forward/backward on one worker
    steps: int = 100
    lr: float = 3e-3
    min_lr_ratio: float = 0.1        # cosine decay floor, as a fraction of lr
    warmup_steps: int = 10
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    checkpoint_every: int = 25
    log_every: int = 5
    activation_checkpointing: bool = False
    compile: bool = False
    dtype: str = "float32"           # compute dtype: bf16 on GPU (params and optimizer stay fp32)
    seed: int = 0
    max_failures: int = 3            # worker failures Ray Train recovers from (FailureConfig)

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "micro_batch_size", "steps", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        if self.micro_batch_size > self.batch_size:
            raise ConfigError(f"train.micro_batch_size={self.micro_batch_size} exceeds "
                              f"train.batch_size={self.batch_size}")
        if self.max_failures < 0:
            raise ConfigError(f"train.max_failures={self.max_failures} must be >= 0")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"train.dtype={self.dtype!r} must be float32 or bfloat16")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if not self.lr > 0:
            raise ConfigError(f"train.lr={self.lr} must be > 0")
        if not (self.warmup_steps >= 0 and self.weight_decay >= 0 and self.grad_clip > 0):
            raise ConfigError(f"train: need warmup_steps >= 0 ({self.warmup_steps}), weight_decay >= 0 "
                              f"({self.weight_decay}) and grad_clip > 0 ({self.grad_clip})")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"train: betas ({self.beta1}, {self.beta2}) must be in [0, 1)")

    def micro_steps(self, world_size: int) -> int:
        """Forward/backward passes per optimizer step on every worker. Rank r takes rows r, r + w, ...
        of the batch (ceil or floor of batch/w); all ranks run as many passes as the largest share
        needs (FSDP's collectives must match), a rank with fewer rows padding with a zero-weight
        pass. Any worker count up to batch_size trains the same step."""
        if world_size > self.batch_size:
            raise ConfigError(f"train.batch_size={self.batch_size} leaves some of {world_size} workers "
                              "without a row; raise the batch size or lower train_workers")
        return passes(self.batch_size, world_size, self.micro_batch_size)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # no weight decay on norms (1-D); embeddings and matrices decay
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=False)


def loss_fn(model, tokens: torch.Tensor, doc_ids: torch.Tensor, loss_mask: torch.Tensor | None = None):
    """Returns (sum of token losses, number of trained tokens).

    The model returns the targets' log-probs, its logits made chunk by chunk (phi4ray.model.losses), so
    the (tokens x vocab) logits of a long micro-batch never exist at once. With a loss mask, only
    trained positions are computed (SFT trains on assistant tokens only: on the tiny model that
    halves the step)."""
    m = None if loss_mask is None else loss_mask[:, 1:].bool()
    logps = model(tokens[:, :-1], doc_ids=doc_ids[:, :-1], logits_mask=m, targets=tokens[:, 1:])
    return -logps.sum(), logps.numel()


class MicroBatch(NamedTuple):
    """One forward/backward pass: rows of seq_len + 1 tokens, their doc ids and (SFT) loss mask;
    weight 0 marks a padding pass (`phi4ray.data.row_stream.micro_slices`)."""
    tokens: torch.Tensor
    doc_ids: torch.Tensor
    loss_mask: torch.Tensor | None = None
    weight: float = 1.0


class SequenceLoader(RowOrder):
    """RowOrder over packed rows (tokens, doc_ids and, in SFT, loss_mask) -> this rank's micro-batches.

    `rows` is an `ArrayRows` or a `ParquetRows` (`from_shards`): a rank reads only its own rows."""

    def __init__(self, rows, batch_size: int, seed: int = 0, seq_len: int | None = None, window: int = WINDOW):
        super().__init__(rows.sizes, batch_size, seed, window)
        self.rows, self.seq_len = rows, seq_len

    @classmethod
    def from_arrays(cls, tokens: np.ndarray, doc_ids: np.ndarray, batch_size: int, seed: int = 0,
                    loss_mask: np.ndarray | None = None) -> "SequenceLoader":
        cols = {"tokens": tokens, "doc_ids": doc_ids, **({} if loss_mask is None else {"loss_mask": loss_mask})}
        return cls(ArrayRows(cols), batch_size, seed)

    @classmethod
    def from_shards(cls, folder, seq_len: int, batch_size: int, seed: int = 0, loss_mask: bool = False,
                    window: int = WINDOW) -> "SequenceLoader":
        """Packed rows of RUN/<folder> (phi4ray.data.packing / phi4ray.train.sft), checked against seq_len on
        the first row before training starts."""
        cols = ("tokens", "doc_ids") + (("loss_mask",) if loss_mask else ())
        loader = cls(ParquetRows(folder, cols, what="packed rows"), batch_size, seed, seq_len, window)
        loader._arrays(loader.rows.take(np.array([0])), [0])
        loader.rows.rows_taken = loader.rows.rows_decoded = 0  # the check is not training data
        return loader

    def _arrays(self, got, ids) -> dict[str, np.ndarray]:
        if isinstance(got, dict):
            return got
        where = self.rows.locate(int(ids[0]))[0]
        width = None if self.seq_len is None else self.seq_len + 1
        out = {c: fixed_width(got, c, where=where) for c in got.column_names}
        if len({a.shape for a in out.values()}) > 1:
            raise ValueError(f"{where}: columns differ in shape: { {c: a.shape for c, a in out.items()} }")
        if width is not None and out["tokens"].shape[1] != width:
            raise ValueError(f"{where}: rows are {out['tokens'].shape[1]} tokens long, not {width} "
                             f"(train.seq_len={self.seq_len} + 1); re-run tokenize with this seq_len")
        return out

    def next_batch(self, rank: int, world: int, micro: int, device) -> list[MicroBatch]:
        mine = self.next_rows()[rank::world]
        cols = self._arrays(self.rows.take(mine), mine)
        mask = cols.get("loss_mask")
        return [MicroBatch(torch.from_numpy(cols["tokens"][sl]).long().to(device),
                           torch.from_numpy(cols["doc_ids"][sl]).long().to(device),
                           None if mask is None else torch.from_numpy(mask[sl].astype(np.int8)).to(device), w)
                for sl, w in micro_slices(len(mine), self.batch_size, world, micro)]


def apply_optimizer(model, optimizer, step: int, cfg: TrainConfig) -> tuple[float, float]:
    """Clip, set the scheduled lr, step, zero grads. Returns (grad norm before clipping, lr)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    lr = lr_at(step, cfg)
    for g in optimizer.param_groups:
        g["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm), lr


def set_gradient_sync(model, on: bool) -> None:
    """FSDP2 reduce-scatters gradients after every backward unless told not to: during gradient
    accumulation only the last pass syncs (a plain module has nothing to sync)."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(on)


def train_step(model, optimizer, micro_batches, step: int, cfg: TrainConfig, all_reduce=None) -> dict:
    """One optimizer step over this worker's micro-batches (`MicroBatch`, or (tokens, doc_ids,
    loss_mask) tuples). Loss is normalised by the number of trained tokens over all workers
    (all_reduce sums across them), so any split over any number of workers gives the same gradient
    as one big batch; zero-weight passes (padding, `micro_slices`) count nothing."""
    mbs = [mb if isinstance(mb, MicroBatch) else MicroBatch(*mb) for mb in micro_batches]
    n_local = sum(int(mb.loss_mask[:, 1:].sum()) if mb.loss_mask is not None else mb.tokens[:, 1:].numel()
                  for mb in mbs if mb.weight)
    n_total = torch.tensor(float(n_local))
    if all_reduce is not None:
        all_reduce(n_total)
    loss_sum = 0.0
    for i, mb in enumerate(mbs):
        set_gradient_sync(model, i == len(mbs) - 1)
        with torch.autocast(mb.tokens.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16"):
            s, _ = loss_fn(model, mb.tokens, mb.doc_ids, mb.loss_mask)
        (s * (mb.weight / n_total.item())).backward()
        loss_sum += mb.weight * s.item()
    grad_norm, lr = apply_optimizer(model, optimizer, step, cfg)
    loss = torch.tensor(loss_sum)
    if all_reduce is not None:
        all_reduce(loss)
    return {"loss": loss.item() / n_total.item(), "grad_norm": grad_norm, "lr": lr, "tokens": int(n_total.item())}


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of known GPUs, for MFU; None where unknown (CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12), ("A10", 125e12)):
        if key in name:
            return flops
    return None
