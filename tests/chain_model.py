"""A model with planted behaviour: a real Phi4 (exported, served by vLLM like any other) whose
weights make it a token bigram chain, so a test knows exactly what it samples.

Every block's output projections are zero, so the last position's hidden state is its own token's
embedding; chain tokens get orthonormal embeddings, and the output row of each successor is the
sum of its predecessors' embeddings scaled to a logit of LOGIT. A token with two successors picks
each with probability 1/2 (temperature 1), every other token has probability ~vocab * e^-LOGIT.
"""
from __future__ import annotations

import torch

from phi4ray.model.config import model_preset
from phi4ray.model.decoder import Phi4, build_model
from phi4ray.model.phi4_tokenizer import IM_END, phi4_tokenizer

LOGIT = 30.0


def chain_model(successors: dict[int, list[int]]) -> Phi4:
    """A 1-layer untied tiny model whose next token after t is uniform over successors[t]."""
    cfg = model_preset("tiny").replace(n_layers=1, tie_embeddings=False)
    model = build_model(cfg, seed=0)
    tokens = sorted(set(successors) | {s for nxt in successors.values() for s in nxt})
    assert len(tokens) <= cfg.dim, "one orthonormal direction per chain token"
    basis, _ = torch.linalg.qr(torch.randn(cfg.dim, cfg.dim, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        for block in model.layers.values():
            block.attn.wo.weight.zero_()
            block.ffn.w_down.weight.zero_()
        out = model.output.weight
        out.zero_()
        for i, t in enumerate(tokens):
            model.tok_embeddings.weight[t] = basis[:, i]
        # RMSNorm scales a unit vector to norm sqrt(dim): LOGIT / sqrt(dim) per unit of overlap
        for t, nxt in successors.items():
            for s in nxt:
                out[s] += model.tok_embeddings.weight[t] * (LOGIT / cfg.dim ** 0.5)
    return model


def text_chain(start: int, pieces: list[str | tuple[str, str]]) -> tuple[dict[int, list[int]], list[dict]]:
    """The successor table that writes `pieces` after token `start` and then ends the turn: a str is
    fixed text, a (a, b) pair a fair coin between two single-token texts. Also where each coin sits:
    [{"position": index in the completion, "tokens": (id_a, id_b)}]. Every token occurs once in the
    chain (a repeated one would merge two paths)."""
    tok = phi4_tokenizer()
    succ: dict[int, list[int]] = {}
    coins, prev, position = [], [start], 0
    for piece in pieces:
        if isinstance(piece, tuple):
            ids = [tok.encode(p) for p in piece]
            assert all(len(i) == 1 for i in ids), f"coin sides must be single tokens: {piece} -> {ids}"
            step = [[i[0] for i in ids]]
            coins.append({"position": position, "tokens": tuple(i[0] for i in ids)})
        else:
            step = [[t] for t in tok.encode(piece)]
        for options in step:
            for p in prev:
                assert p not in succ, f"token {p} ({tok.decode([p])!r}) occurs twice in the chain"
                succ[p] = options
            prev, position = options, position + 1
    for p in prev:
        succ[p] = [IM_END]
    return succ, coins
