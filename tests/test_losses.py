"""Chunked log-probs: the plain full-logits path's numbers, without its (tokens x vocab) tensor."""
import pytest
import torch
import torch.nn.functional as F

from phi4ray.model import losses
from phi4ray.model.config import model_preset
from phi4ray.model.decoder import build_model
from phi4ray.model.losses import token_logps
from phi4ray.train.dpo import completion_logps
from phi4ray.train.step import loss_fn
from tests.test_attention import ShapeLog

V = 512


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= rel * b.abs().max())


def test_token_logps_equal_log_softmax_in_value_and_grad():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 32, generator=g, requires_grad=True)
    w = torch.randn(V, 32, generator=g, requires_grad=True)
    t = torch.randint(0, V, (50,), generator=g)
    ref = torch.log_softmax(h @ w.T, -1).gather(1, t[:, None])[:, 0]
    ref_gh, ref_gw = torch.autograd.grad(ref.sum(), (h, w))
    out = token_logps(h, w, t, chunk_elements=16 * V)  # 4 chunks, the last one short
    gh, gw = torch.autograd.grad(out.sum(), (h, w))
    assert _close(out, ref) and _close(gh, ref_gh) and _close(gw, ref_gw)
    with pytest.raises(ValueError, match="50 hidden rows but 49 targets"):
        token_logps(h, w, t[:49])


def _model():
    return build_model(model_preset("tiny").replace(n_layers=2, vocab_size=V, max_seq_len=64), seed=0)


@pytest.mark.parametrize("masked", [False, True])
def test_loss_fn_equals_the_full_logits_loss(monkeypatch, masked):
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 24 * V)  # several chunks per micro-batch
    model = _model()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (3, 65), generator=g)
    doc_ids = (torch.arange(65) >= 30).long().expand(3, 65)
    mask = (torch.rand(3, 65, generator=g) < 0.5).long() if masked else None
    keep = torch.ones(3, 64, dtype=torch.bool) if mask is None else mask[:, 1:].bool()
    logits = model(tokens[:, :-1], doc_ids=doc_ids[:, :-1])
    ref = F.cross_entropy(logits[keep], tokens[:, 1:][keep], reduction="sum")
    ref.backward()
    ref_g = _grads(model)
    model.zero_grad()
    with ShapeLog() as log:
        s, n = loss_fn(model, tokens, doc_ids, mask)
        s.backward()
    assert n == int(keep.sum()) and s.item() == pytest.approx(ref.item(), rel=1e-5)
    for name, gr in _grads(model).items():
        assert _close(gr, ref_g[name]), name
    # no more than one chunk's logits at a time, in forward and backward ((dim, V): the weight's transpose)
    rows = [s[0] for s in log.shapes if len(s) == 2 and s[1] == V and s[0] != model.cfg.dim]
    assert rows and max(rows) <= 24


def test_dpo_completion_logps_equal_the_full_logits_ones(monkeypatch):
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 4 * V)
    model = _model()
    prompts, completions = [[1, 2, 3], [4, 5]], [[6, 7, 8, 9, 10, 11], [12]]
    out = completion_logps(model, prompts, completions)
    grads = torch.autograd.grad(out.sum(), list(model.parameters()))
    ref = []
    for p, c in zip(prompts, completions):
        lp = torch.log_softmax(model(torch.tensor([p + c]))[0, :-1], -1)
        ref.append(sum(lp[len(p) - 1 + i, tok] for i, tok in enumerate(c)))
    ref = torch.stack(ref)
    ref_grads = torch.autograd.grad(ref.sum(), list(model.parameters()))
    assert _close(out, ref)
    assert all(_close(a, b) for a, b in zip(grads, ref_grads))


def test_targets_must_match_tokens():
    with pytest.raises(ValueError, match=r"targets \(2, 4\) must have the shape of tokens \(2, 5\)"):
        _model()(torch.zeros(2, 5, dtype=torch.long), targets=torch.zeros(2, 4, dtype=torch.long))
