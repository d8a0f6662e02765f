import pytest
import torch

from phi4ray.model.config import ModelConfig, model_preset
from phi4ray.model.decoder import build_model, positions_from_doc_ids
from phi4ray.presets import run_preset
from phi4ray.run.errors import ConfigError
from phi4ray.train.jobs import midtrain_seq_len, post_midtrain_model


def test_phi4_14b_parameter_count_on_meta():
    cfg = model_preset("phi4-14b")
    model = build_model(cfg, device="meta")
    n = sum(p.numel() for p in model.parameters())
    assert n == cfg.num_params()
    assert abs(n - 14.66e9) / 14.66e9 < 0.005
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim, cfg.vocab_size) == \
        (5120, 40, 40, 10, 128, 17920, 100_352)
    assert not cfg.tie_embeddings and cfg.max_seq_len == 16_384


@pytest.mark.parametrize("name, pre_ctx", [("phi4-14b", 4096), ("small", 1024)])
def test_presets_follow_the_reports_rope_schedule(name, pre_ctx):
    """Pretraining at base 10K and context L, midtraining at base 250K and 4L (report sec. 3.3)."""
    cfg = run_preset(name)
    assert cfg.model.rope_theta == 10_000 and cfg.data.seq_len == pre_ctx
    assert post_midtrain_model(cfg).rope_theta == 250_000 and midtrain_seq_len(cfg) == 4 * pre_ctx
    assert midtrain_seq_len(cfg) <= cfg.model.max_seq_len


@pytest.mark.parametrize("name", ["tiny", "small", "phi4-14b"])
def test_presets_count_matches_module(name):
    cfg = model_preset(name)
    assert sum(p.numel() for p in build_model(cfg, device="meta").parameters()) == cfg.num_params()


def test_flops_per_token_by_hand():
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=1000,
                      max_seq_len=32, tie_embeddings=False)
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128  # q, k+v, o, gate/up/down
    matmul = 2 * per_layer + 1000 * 64  # + lm_head
    assert cfg.flops_per_token(32) == 6 * matmul + 12 * 2 * 64 * 32


@pytest.mark.parametrize("changes, field", [
    ({"n_heads": 3}, "n_heads"), ({"n_kv_heads": 3}, "n_kv_heads"), ({"dim": 0}, "dim"),
    ({"rope_theta": -1.0}, "rope_theta"), ({"n_layers": 2.5}, "n_layers"),
])
def test_inconsistent_config_names_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        model_preset("tiny").replace(**changes)


def test_unknown_preset_is_named():
    with pytest.raises(ConfigError, match="'phi5'.*known presets"):
        model_preset("phi5")


def test_positions_restart_per_document():
    doc = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2]])
    assert positions_from_doc_ids(doc).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("impl", ["auto", "segments", "flex", "dense"])
def test_packed_documents_do_not_see_each_other(impl):
    # each document alone starts at position 0: equal outputs mean positions restart per document
    cfg = model_preset("tiny").replace(n_layers=2, vocab_size=512)
    model = build_model(cfg, seed=0).eval()
    a, b = torch.randint(0, 512, (1, 7)), torch.randint(0, 512, (1, 5))
    packed = torch.cat([a, b], dim=1)
    doc_ids = torch.tensor([[0] * 7 + [1] * 5])
    with torch.no_grad():
        together = model(packed, doc_ids=doc_ids, attention=impl)
        alone_a, alone_b = model(a), model(b)
        leaky = model(packed)  # without doc ids the second document sees the first
    torch.testing.assert_close(together[:, :7], alone_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(together[:, 7:], alone_b, rtol=0, atol=1e-5)
    assert (leaky[:, 7:] - alone_b).abs().max() > 1e-3


def test_causality_and_gqa_shapes():
    cfg = model_preset("tiny").replace(n_layers=1, vocab_size=256)
    model = build_model(cfg, seed=0).eval()
    x = torch.randint(0, 256, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 256
    with torch.no_grad():
        lx, ly = model(x), model(y)
    assert lx.shape == (2, 16, 256)
    torch.testing.assert_close(lx[:, :10], ly[:, :10])  # the future never leaks backwards
    assert model.layers["0"].attn.wk.weight.shape == (cfg.n_kv_heads * cfg.head_dim, cfg.dim)


def test_sequence_longer_than_context_is_refused():
    cfg = model_preset("tiny").replace(n_layers=1, vocab_size=64, max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len=8"):
        build_model(cfg)(torch.zeros(1, 9, dtype=torch.long))


def test_loss_decreases_when_training_tiny():
    torch.manual_seed(0)
    cfg = model_preset("tiny").replace(n_layers=2, vocab_size=128)
    model = build_model(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 128, (4, 33))
    losses = []
    for _ in range(30):
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 128), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
