"""Apply parallelism in torchtitan's fixed order: activation checkpointing -> compile -> FSDP2.

Each transformer block is its own FSDP unit (its parameters are gathered just before it runs and
freed after), then the root wraps the embeddings, final norm and output. On GPU, bf16 compute with
fp32 gradient reduction; on CPU everything stays fp32 (bf16 matmuls crawl there). Gradients are
summed over ranks (the loss is normalised globally), so any worker count trains the same step.
"""
from __future__ import annotations

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from phi4ray.model.decoder import Phi4
from phi4ray.train.step import TrainConfig


def parallelize(model: Phi4, cfg: TrainConfig, distributed: bool) -> Phi4:
    if cfg.activation_checkpointing:  # recompute each block in backward: memory for FLOPs
        for name, block in list(model.layers.items()):
            model.layers[name] = checkpoint_wrapper(block, preserve_rng_state=False)
    if cfg.compile:  # per block: one compiled graph reused by every layer
        for block in model.layers.values():
            block.compile()
    if distributed:
        mp = None
        if cfg.dtype == "bfloat16":
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        kw = {"mp_policy": mp} if mp else {}
        units = list(model.layers.values())
        for i, block in enumerate(units):
            # the last block's parameters are needed first in backward: keep them gathered
            fully_shard(block, reshard_after_forward=i < len(units) - 1, **kw)
        fully_shard(model, **kw)
        # the steps already divide the loss by the global count of trained tokens (or pairs),
        # whatever each rank's share: FSDP must sum the gradients, not average them over ranks
        for unit in [*units, model]:
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no PREMUL_SUM
    return model
