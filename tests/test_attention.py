"""Document-masked attention without a T x T mask, against the dense-mask reference."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from phi4ray.model.attention import SegmentDocuments, bucket_length, document_attention, run_ids
from phi4ray.model.config import model_preset
from phi4ray.model.decoder import build_model

T = 96  # no model dimension of the test model equals it, so a T x T tensor is recognisable by shape


class ShapeLog(TorchDispatchMode):
    """Records the shape of every tensor an op returns, forward and backward."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def _doc_rows() -> torch.Tensor:
    """A document spanning the whole row; one with length-1 documents (at the start, inside, at the
    end); one that reuses an id after another document (a new document all the same)."""
    lengths = [[T], [1, 1, 5, 1, 30, 2, 1, 40, 14, 1], [20, 20, 56]]
    rows = []
    for r, ls in enumerate(lengths):
        ids = [d for d, n in enumerate(ls) for _ in range(n)]
        if r == 2:
            ids = [0] * 20 + [1] * 20 + [0] * 56
        rows.append(ids)
    return torch.tensor(rows)


def _model():
    cfg = model_preset("tiny").replace(n_layers=2, vocab_size=512, max_seq_len=T)
    assert cfg.n_kv_heads < cfg.n_heads  # the parity covers grouped-query attention
    return build_model(cfg, seed=0)


def _logits_and_grads(model, tokens, doc_ids, impl):
    model.zero_grad()
    logits = model(tokens, doc_ids=doc_ids, attention=impl)
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_segments_match_the_dense_mask_in_logits_and_grads():
    model, doc_ids = _model(), _doc_rows()
    tokens = torch.randint(0, 512, doc_ids.shape, generator=torch.Generator().manual_seed(1))
    ref, ref_g = _logits_and_grads(model, tokens, doc_ids, "dense")
    out, g = _logits_and_grads(model, tokens, doc_ids, "segments")
    assert (out - ref).abs().max() <= 1e-4
    assert ref.abs().max() > 1  # not a comparison of zeros
    for name in ref_g:
        scale = ref_g[name].abs().max()
        assert 0 < scale and (g[name] - ref_g[name]).abs().max() <= 1e-4 * min(1.0, scale), name


def test_segments_never_hold_a_t_by_t_tensor():
    model, doc_ids = _model(), _doc_rows()
    tokens = torch.randint(0, 512, doc_ids.shape)
    for impl, expect in (("segments", False), ("dense", True)):
        with ShapeLog() as log:
            model(tokens, doc_ids=doc_ids, attention=impl).sum().backward()
        assert any(s.count(T) >= 2 for s in log.shapes) == expect, impl


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_forward_matches_the_dense_mask_on_cpu():
    # flex has no CPU backward: this checks the block mask's meaning; the GPU runs it compiled
    model, doc_ids = _model().eval(), _doc_rows()
    tokens = torch.randint(0, 512, doc_ids.shape)
    with torch.no_grad():
        ref = model(tokens, doc_ids=doc_ids, attention="dense")
        out = model(tokens, doc_ids=doc_ids, attention="flex")
    assert (out - ref).abs().max() <= 1e-4


def test_auto_takes_segments_on_cpu_and_plain_causal_without_doc_ids():
    doc_ids = _doc_rows()
    assert isinstance(document_attention(doc_ids), SegmentDocuments)
    q = torch.randn(1, 4, 8, 16)
    k = v = torch.randn(1, 2, 8, 16)
    whole_row = document_attention(torch.zeros(1, 8, dtype=torch.long), "segments")
    torch.testing.assert_close(document_attention(None)(q, k, v), whole_row(q, k, v))
    with pytest.raises(ValueError, match="'varlen' must be one of"):
        document_attention(doc_ids, "varlen")


def test_segments_batch_documents_into_few_padded_buckets():
    plan = SegmentDocuments(_doc_rows())
    sizes = [size for _, size, _ in plan.groups]
    assert len(sizes) < 14  # 14 documents in all
    assert sum(len(kept) for _, _, kept in plan.groups) == _doc_rows().numel()  # every token once
    for n in range(1, 5000):
        assert n <= bucket_length(n) <= 1.25 * n


def test_run_ids_split_on_every_change():
    assert run_ids(torch.tensor([[0, 0, 1, 0, 0, 7]])).tolist() == [[0, 0, 1, 2, 2, 3]]
