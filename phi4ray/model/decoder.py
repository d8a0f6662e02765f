"""The Phi-4 decoder (Phi-4 report sec. 3; the phi-3-medium layout).

Pre-norm transformer: RMSNorm -> grouped-query attention with RoPE -> residual, RMSNorm -> SwiGLU
MLP -> residual; no biases anywhere; untied input/output embeddings (tying is allowed for tiny
presets). Packed pretraining sequences carry `doc_ids` so attention never crosses a document
boundary (phi4ray.model.attention: no T x T mask in training) and positions restart at each document.
Training asks forward for the log-probs of its targets (phi4ray.model.losses: no full logits).

The math matches HF `Phi3ForCausalLM` exactly (rotate-half RoPE, RMSNorm in fp32), so
`phi4ray.model.hf` only renames and fuses tensors.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from phi4ray.model.attention import document_attention
from phi4ray.model.attention import document_causal_mask as document_causal_mask  # re-exported for packing's docs and tests
from phi4ray.model.config import ModelConfig
from phi4ray.model.losses import token_logps


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32 even under bf16: the mean of squares loses too much in 8 mantissa bits
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for integer positions (any shape) -> (*positions.shape, head_dim)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, heads, T, hd); cos/sin: (B, T, hd)
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    return x * cos + _rotate_half(x) * sin


def positions_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """Position of each token inside its document: restarts at 0 wherever doc_ids changes."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)
    starts = torch.zeros_like(idx)
    starts[:, 1:] = torch.where(doc_ids[:, 1:] != doc_ids[:, :-1], idx[:, 1:], 0)
    return idx - starts.cummax(dim=1).values


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, attend) -> torch.Tensor:
        """attend: the plan of phi4ray.model.attention.document_attention; k and v go in with their
        n_kv_heads (grouped-query attention) and the plan shares them among the query heads."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attend(q, k, v)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_gate = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w_up = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w_down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x, cos, sin, attend):
        x = x + self.attn(self.attn_norm(x), cos, sin, attend)
        return x + self.ffn(self.ffn_norm(x))


class Phi4(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        # a ModuleDict keyed by str(layer) keeps FQNs stable for DCP when layers are wrapped
        self.layers = nn.ModuleDict({str(i): Block(cfg, i) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def output_weight(self) -> torch.Tensor:
        return self.tok_embeddings.weight if self.output is None else self.output.weight

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """torchtitan's init: small normals, residual projections scaled down with depth."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.tok_embeddings.weight.device).manual_seed(seed)
        cfg = self.cfg

        def normal(t, std):
            t.copy_(torch.nn.init.trunc_normal_(torch.empty_like(t), std=std, a=-3 * std, b=3 * std, generator=gen))

        normal(self.tok_embeddings.weight, cfg.embed_init_std)
        for block in self.layers.values():
            depth_std = cfg.init_std / math.sqrt(2 * (block.layer_id + 1))
            for lin in (block.attn.wq, block.attn.wk, block.attn.wv, block.ffn.w_gate):
                normal(lin.weight, cfg.init_std)
            for lin in (block.attn.wo, block.ffn.w_up, block.ffn.w_down):
                normal(lin.weight, depth_std)
            block.attn_norm.weight.fill_(1.0)
            block.ffn_norm.weight.fill_(1.0)
        self.norm.weight.fill_(1.0)
        if self.output is not None:
            normal(self.output.weight, cfg.dim ** -0.5)

    def forward(
        self,
        tokens: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        logits_mask: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        attention: str = "auto",
    ) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, vocab), or the log-probs of `targets`.

        doc_ids (B, T): packed documents; attention stays inside each document and positions
        restart per document unless `positions` is given.
        logits_mask (B, T) bool: compute only where it is set: logits (N, vocab), or with targets
        the N log-probs. The output matmul is most of a small model's FLOPs, and SFT/DPO need it
        only on trained tokens; it happens inside forward so that FSDP has the output weight gathered.
        targets (B, T): return log p(targets) per position (or per set position of logits_mask),
        fp32, flattened; at most phi4ray.model.losses.CHUNK_ELEMENTS logits exist at a time.
        attention: phi4ray.model.attention's implementation for doc_ids ("auto": flex on CUDA, per-document
        SDPA elsewhere; "dense" is the reference mask).
        """
        B, T = tokens.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds model.max_seq_len={self.cfg.max_seq_len}")
        if targets is not None and targets.shape != tokens.shape:
            raise ValueError(f"targets {tuple(targets.shape)} must have the shape of tokens {tuple(tokens.shape)}")
        if doc_ids is not None and positions is None:
            positions = positions_from_doc_ids(doc_ids)
        if positions is None:
            positions = torch.arange(T, device=tokens.device).expand(B, T)
        attend = document_attention(doc_ids, attention)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        h = self.tok_embeddings(tokens)
        for block in self.layers.values():
            h = block(h, cos, sin, attend)
        h = self.norm(h)
        if logits_mask is not None:
            h = h[logits_mask]
            targets = None if targets is None else targets[logits_mask]
        if targets is not None:
            return token_logps(h.reshape(-1, h.shape[-1]), self.output_weight(), targets.reshape(-1))
        return F.linear(h, self.output_weight())


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", seed: int | None = 0,
                dtype: torch.dtype = torch.float32) -> Phi4:
    """A freshly initialised model. On device="meta" nothing is allocated (for counting or FSDP)."""
    with torch.device(device):
        model = Phi4(cfg)
    if str(device) != "meta":
        model.init_weights(seed)
        model.to(dtype)
    return model


@torch.no_grad()
def greedy_decode(model: Phi4, prompt_ids: list[int], max_new_tokens: int,
                  stop_ids: tuple[int, ...] = ()) -> list[int]:
    """Reference greedy decoding without a KV cache: slow, exact, for parity checks."""
    model.eval()
    device = model.tok_embeddings.weight.device
    ids = list(prompt_ids)
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([ids[-model.cfg.max_seq_len:]], device=device))
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        ids.append(nxt)
        if nxt in stop_ids:
            break
    return out
