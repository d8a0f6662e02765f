"""Log-probabilities of targets without materialising the full logits (torchtitan / Liger style).

The output projection over a 100K vocabulary is the largest activation of a long-context step:
(B*T, vocab) fp32 logits, plus their softmax and gradient. Here the positions are cut into chunks;
each chunk's logits live only inside a checkpointed function, so the forward keeps just the
per-token results and the backward recomputes one chunk's logits at a time. The extra cost is
one more output matmul per chunk in backward; rows that fit in a single chunk are computed plainly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# logits elements per chunk: 2**27 fp32 is 512 MiB whatever the sequence length, and a chunk's matmul
# is large enough to run at full speed. Recomputing costs a third more output-layer FLOPs, which is
# most of a tiny model's step, so a micro-batch within one chunk (the tiny CPU presets' training)
# skips the checkpoint: its logits are already within the bound
CHUNK_ELEMENTS = 2 ** 27


def _chunk_logps(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(F.linear(h, weight).float(), targets, reduction="none")


def token_logps(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk_elements: int | None = None) -> torch.Tensor:
    """log softmax(h @ weight.T)[i, targets[i]] for every row i of h (N, dim): (N,) in fp32.

    At most `chunk_elements` (default CHUNK_ELEMENTS) logits exist at a time, forward and backward."""
    if h.shape[0] != targets.shape[0]:
        raise ValueError(f"{h.shape[0]} hidden rows but {targets.shape[0]} targets")
    rows = max(1, (chunk_elements or CHUNK_ELEMENTS) // weight.shape[0])
    if h.shape[0] <= rows:  # one chunk: nothing to save by recomputing it
        return _chunk_logps(h, weight, targets)
    return torch.cat([checkpoint(_chunk_logps, h[i:i + rows], weight, targets[i:i + rows], use_reentrant=False)
                      for i in range(0, h.shape[0], rows)])
