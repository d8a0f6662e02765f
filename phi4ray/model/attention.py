"""Attention over packed rows without a T x T mask.

A packed row holds several documents; a token attends only to earlier tokens of its own document.
A document is a run of equal consecutive `doc_ids` (as `positions_from_doc_ids` counts positions),
so ids need not be unique along a row. `document_attention` builds, once per forward, the plan every
layer uses; a plan is called as `plan(q, k, v)` on (B, heads, T, head_dim) tensors, with k/v
carrying the KV heads only (grouped-query attention):

- "segments": causal SDPA over each document's slice. Documents are gathered into buckets of
  nearly equal padded length (one SDPA call per bucket, not per document); a document is padded
  at its end, and causal attention keeps every real query off those padded keys, so the result is
  exact. Memory is O(T): no score matrix, no mask. The CPU path (SDPA's CPU flash kernel has a
  backward, flex_attention has none there).
- "flex": flex_attention with a block mask built from the document ids: the GPU path. Compiled,
  as flex_attention is only memory-efficient when compiled.
- "dense": the (B, 1, T, T) boolean mask, kept as the reference that the others are tested against.
- "auto": flex on CUDA, segments elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import flex_attention as fa

IMPLS = ("auto", "segments", "flex", "dense")


def document_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean mask: True where query i may attend key j (same document, j <= i)."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    run = run_ids(doc_ids)
    same_doc = run[:, :, None] == run[:, None, :]
    return (same_doc & causal)[:, None]


def run_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """Index of each token's document within its row: +1 wherever doc_ids changes."""
    run = torch.zeros_like(doc_ids)
    run[:, 1:] = (doc_ids[:, 1:] != doc_ids[:, :-1]).cumsum(dim=1)
    return run


def repeat_kv(q, k, v):
    """GQA by copies: each KV head serves a group of query heads (SDPA's own enable_gqa is not
    taken by every fused GPU kernel)."""
    rep = q.shape[1] // k.shape[1]
    return (k, v) if rep == 1 else (k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1))


def causal_attention(q, k, v):
    """One document per row: SDPA's causal kernels (flash on GPU and on CPU)."""
    return F.scaled_dot_product_attention(q, *repeat_kv(q, k, v), is_causal=True)


class DenseDocuments:
    """The reference: SDPA with the full (B, 1, T, T) document-causal mask, O(T^2) memory."""

    def __init__(self, doc_ids: torch.Tensor):
        self.mask = document_causal_mask(doc_ids)

    def __call__(self, q, k, v):
        return F.scaled_dot_product_attention(q, *repeat_kv(q, k, v), attn_mask=self.mask)


def bucket_length(n: int) -> int:
    """n rounded up to a multiple of a quarter of its power of two: at most 25% padding per
    document, at most four bucket sizes per doubling of the length."""
    step = 1 << max(0, n.bit_length() - 3)
    return -(-n // step) * step


class SegmentDocuments:
    """Causal SDPA per document, documents batched by bucket (module docstring)."""

    def __init__(self, doc_ids: torch.Tensor):
        B, T = doc_ids.shape
        self.shape = (B, T)
        ids = doc_ids.detach().cpu()
        first = torch.ones(B, T, dtype=torch.bool)
        first[:, 1:] = ids[:, 1:] != ids[:, :-1]
        starts = first.flatten().nonzero()[:, 0]  # flat token index b * T + t of each document start
        self.whole_rows = len(starts) == B  # one document per row: plain causal attention, no copies
        lengths = torch.diff(starts, append=torch.tensor([B * T]))
        buckets = torch.tensor([bucket_length(n) for n in lengths.tolist()])
        self.groups: list[tuple[torch.Tensor, int, torch.Tensor]] = []  # (gather index, size, kept slots)
        kept_tokens = []
        for size in sorted(set(buckets.tolist())):
            pick = buckets == size
            s, n = starts[pick], lengths[pick]
            offs = torch.arange(size)
            # padding repeats the document's last token: never seen by a real query (causal)
            gather = (s[:, None] + torch.minimum(offs[None], n[:, None] - 1)).flatten()
            real = (offs[None] < n[:, None]).flatten()
            self.groups.append((gather.to(doc_ids.device), size, real.nonzero()[:, 0].to(doc_ids.device)))
            kept_tokens.append(gather[real])
        # outputs come out bucket by bucket; this permutation puts them back in token order
        self.order = torch.argsort(torch.cat(kept_tokens)).to(doc_ids.device)

    def __call__(self, q, k, v):
        if self.whole_rows:
            return causal_attention(q, k, v)
        B, T = self.shape
        H, d = q.shape[1], q.shape[-1]

        def flat(x):  # (B, h, T, d) -> (B*T, h, d)
            return x.transpose(1, 2).reshape(B * T, x.shape[1], d)

        qf, kf, vf = flat(q), flat(k), flat(v)
        outs = []
        for gather, size, kept in self.groups:
            qs, ks, vs = (x.index_select(0, gather).view(-1, size, x.shape[1], d).transpose(1, 2)
                          for x in (qf, kf, vf))
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=k.shape[1] != H)
            outs.append(o.transpose(1, 2).reshape(-1, H, d).index_select(0, kept))
        return torch.cat(outs).index_select(0, self.order).view(B, T, H, d).transpose(1, 2)


_compiled: dict[str, object] = {}


def _flex_functions(compiled: bool):
    """(create_block_mask, flex_attention), compiled once per process (torchtitan's pattern)."""
    if not compiled:
        return fa.create_block_mask, fa.flex_attention
    if not _compiled:
        _compiled.update(mask=torch.compile(fa.create_block_mask), attend=torch.compile(fa.flex_attention, dynamic=False))
    return _compiled["mask"], _compiled["attend"]


class FlexDocuments:
    """flex_attention with a document-causal block mask. Blocks wholly outside every document
    are skipped, so the cost follows the documents' own squares, not T^2.

    Compiled by default on CUDA. `compiled=False` runs flex eagerly, which materialises the scores:
    only for checking the forward on CPU (flex has no CPU backward)."""

    def __init__(self, doc_ids: torch.Tensor, compiled: bool | None = None):
        B, T = doc_ids.shape
        run = run_ids(doc_ids)

        def document_causal(b, h, q_idx, kv_idx):
            return (run[b, q_idx] == run[b, kv_idx]) & (q_idx >= kv_idx)

        make_mask, self.kernel = _flex_functions(doc_ids.is_cuda if compiled is None else compiled)
        self.block_mask = make_mask(document_causal, B, None, T, T, device=doc_ids.device)

    def __call__(self, q, k, v):
        return self.kernel(q, k, v, block_mask=self.block_mask, enable_gqa=k.shape[1] != q.shape[1])


def document_attention(doc_ids: torch.Tensor | None, impl: str = "auto"):
    """The attention plan for a batch: plain causal without doc ids, else `impl` (module docstring)."""
    if impl not in IMPLS:
        raise ValueError(f"attention impl {impl!r} must be one of {IMPLS}")
    if doc_ids is None:
        return causal_attention
    if impl == "auto":
        impl = "flex" if doc_ids.is_cuda else "segments"
    return {"segments": SegmentDocuments, "flex": FlexDocuments, "dense": DenseDocuments}[impl](doc_ids)

