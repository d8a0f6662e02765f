"""Start training from an HF folder without any rank holding the whole model.

The model is built on the meta device, parallelized (FSDP2 shards each parameter by rows), given
memory for its shards only, and filled from the safetensors files: each rank reads just its rows
(phi4ray.model.hf.load_hf_weights). The export side is phi4ray.model.hf.export_hf, called on every rank.
"""
from __future__ import annotations

import os

import torch

from phi4ray.model.config import ModelConfig
from phi4ray.model.decoder import Phi4
from phi4ray.model.hf import CheckpointError, folder_config, load_hf_weights
from phi4ray.train.parallelize import parallelize
from phi4ray.train.step import TrainConfig

# what a stage may set anew (midtraining's longer context and RoPE base, init scales); the rest must match the weights
STAGE_FIELDS = ("max_seq_len", "rope_theta", "init_std", "embed_init_std")


def check_same_architecture(ours: ModelConfig, theirs: ModelConfig, where: str) -> None:
    diff = [f"{k}: {getattr(theirs, k)!r} there, {getattr(ours, k)!r} here"
            for k in ours.__dataclass_fields__ if k not in STAGE_FIELDS and getattr(ours, k) != getattr(theirs, k)]
    if diff:
        raise CheckpointError(f"{where}: another architecture than the stage's model ({'; '.join(diff)})")


def load_sharded(model_cfg: ModelConfig, hf_dir: str | os.PathLike, train_cfg: TrainConfig,
                 device: torch.device | str, distributed: bool) -> Phi4:
    """The parallelized model (fp32 parameters on `device`) with model_cfg's context and RoPE base
    and the folder's weights. With `distributed`, every rank of the process group must call it."""
    check_same_architecture(model_cfg, folder_config(hf_dir)[1], str(hf_dir))
    with torch.device("meta"):
        model = Phi4(model_cfg)
    model = parallelize(model, train_cfg, distributed)
    model.to_empty(device=device)
    load_hf_weights(model, hf_dir)
    return model
