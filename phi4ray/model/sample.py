"""Sampling from our own model in plain torch, with a KV cache: the stages' small before/after
measures (DPO's held-out success) run it where the model is. Serving and search sample with vLLM.

The cache is one more attention plan (phi4ray.model.attention's `attend(q, k, v)` contract): each
layer's new keys and values join its cache and the new queries attend over the cache, so the
decoder's own blocks run unchanged. Prompts are left-padded; pad keys are masked out and positions
start at 0 on each prompt's first token, as the packed training rows have them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from phi4ray.model.attention import repeat_kv
from phi4ray.model.decoder import Phi4, rope_cos_sin


class KVCache:
    """One layer's keys and values so far; `plan(mask)` is the attention of the next tokens."""

    def __init__(self) -> None:
        self.k = self.v = None

    def plan(self, allowed: torch.Tensor):
        def attend(q, k, v):
            self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
            self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
            return F.scaled_dot_product_attention(q, *repeat_kv(q, self.k, self.v), attn_mask=allowed)
        return attend


@torch.no_grad()
def sample(model: Phi4, prompts: list[list[int]], max_new_tokens: int, temperature: float,
           generator: torch.Generator, stop_id: int) -> list[list[int]]:
    """`max_new_tokens` sampled tokens per prompt, or fewer once every row has produced `stop_id`
    (a row's tokens after its stop are sampled all the same; callers cut at the stop). Sampling
    draws on the CPU `generator`, so a seed gives the same tokens on any device."""
    device = model.tok_embeddings.weight.device
    width = max(len(p) for p in prompts)
    tokens = torch.zeros(len(prompts), width, dtype=torch.long)
    valid = torch.zeros(len(prompts), width, dtype=torch.bool)
    for r, p in enumerate(prompts):
        tokens[r, width - len(p):] = torch.tensor(p)
        valid[r, width - len(p):] = True
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    caches = [KVCache() for _ in model.layers]
    out: list[list[int]] = [[] for _ in prompts]
    for _ in range(max_new_tokens):
        n_new, n_keys = tokens.shape[1], valid.shape[1]
        q_at = torch.arange(n_keys - n_new, n_keys)
        keys = torch.arange(n_keys)
        # a query sees the valid keys up to itself; a pad query sees itself only (no empty row)
        allowed = ((keys[None, :] <= q_at[:, None])[None] & valid[:, None, :]) | (keys[None, :] == q_at[:, None])[None]
        allowed = allowed[:, None].to(device)  # (B, 1, new, keys): one mask for every head and layer
        cos, sin = rope_cos_sin(positions.to(device), model.cfg.head_dim, model.cfg.rope_theta)
        h = model.tok_embeddings(tokens.to(device))
        for block, cache in zip(model.layers.values(), caches):
            h = block(h, cos, sin, cache.plan(allowed))
        logits = F.linear(model.norm(h[:, -1]), model.output_weight()).float()
        probs = torch.softmax(logits / max(temperature, 1e-5), -1).cpu()
        nxt = torch.multinomial(probs, 1, generator=generator)
        for r, t in enumerate(nxt[:, 0].tolist()):
            out[r].append(t)
        if all(stop_id in o for o in out):
            break
        tokens, positions = nxt, positions[:, -1:] + 1
        valid = torch.cat([valid, torch.ones(len(prompts), 1, dtype=torch.bool)], dim=1)
    return out
