"""DPO: the loss against TRL's DPOTrainer on the same log-probs, completion log-probs against a
plain forward, and that DPO steps raise the margin on the pairs they train on."""
from __future__ import annotations

import types
from collections import defaultdict

import pytest
import torch

from phi4ray.model.config import ModelConfig
from phi4ray.model.decoder import build_model
from phi4ray.run.errors import ConfigError
from phi4ray.train.dpo import DPOConfig, PairLoader, completion_logps, dpo_loss, dpo_step
from phi4ray.train.step import TrainConfig, make_optimizer


def _trl_loss(per_token_logps, completion_mask, ref_c, ref_r, beta, loss_type, label_smoothing):
    """TRL's own DPOTrainer._compute_loss, fed precomputed log-probs through a stand-in model."""
    from trl.trainer.dpo_trainer import DPOTrainer  # test-only dependency (pyproject's dev extra)

    two_b, T = per_token_logps.shape
    outputs = types.SimpleNamespace(log_probs=per_token_logps[:, 1:], entropy=torch.zeros(two_b, T - 1),
                                    mean_logits=torch.zeros(two_b, T - 1),
                                    is_top1=torch.zeros(two_b, T - 1, dtype=torch.bool))
    model = lambda **kw: outputs  # noqa: E731
    model.training = True
    acc = types.SimpleNamespace(device="cpu", gather_for_metrics=lambda t: t, gather=lambda t: t)
    self = types.SimpleNamespace(
        model=model, accelerator=acc, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
        label_smoothing=label_smoothing, use_weighting=False, _metrics={"train": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(two_b, T, dtype=torch.long), "attention_mask": torch.ones(two_b, T),
              "completion_mask": completion_mask, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}
    loss = DPOTrainer._compute_loss(self, model, inputs, return_outputs=False)
    return loss, self._metrics["train"]


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("robust", 0.1), ("ipo", 0.0)])
def test_loss_matches_trl(loss_type, eps):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    mask = torch.zeros(2 * B, T)
    lengths = torch.randint(1, T - 2, (2 * B,), generator=g)
    for i, n in enumerate(lengths):
        mask[i, T - n:] = 1  # completion at the end, after a prompt
    per_token = -torch.rand(2 * B, T, generator=g) * 3 * mask  # log-probs, 0 outside completions
    ref_c, ref_r = -torch.rand(B, generator=g) * 10, -torch.rand(B, generator=g) * 10
    beta = 0.3
    trl_loss, metrics = _trl_loss(per_token, mask, ref_c, ref_r, beta, loss_type, eps)

    pc, pr = per_token[:B].sum(1), per_token[B:].sum(1)
    rc, rr = ref_c, ref_r
    if loss_type == "ipo":
        lc, lr = mask[:B].sum(1), mask[B:].sum(1)
        pc, pr, rc, rr = pc / lc, pr / lr, rc / lc, rr / lr
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta, loss_type, eps)
    assert losses.mean().item() == pytest.approx(trl_loss.item(), rel=1e-6, abs=1e-7)
    if loss_type != "ipo":  # TRL logs un-normalised rewards
        assert (cr - rj).mean().item() == pytest.approx(metrics["rewards/margins"][0], rel=1e-6)


def test_conservative_dpo_form():
    x = torch.tensor([0.5, -1.0, 2.0])
    losses, _, _ = dpo_loss(x, torch.zeros(3), torch.zeros(3), torch.zeros(3), 0.5, "sigmoid", 0.2)
    expect = -0.8 * torch.nn.functional.logsigmoid(0.5 * x) - 0.2 * torch.nn.functional.logsigmoid(-0.5 * x)
    torch.testing.assert_close(losses, expect)


def test_config_errors():
    with pytest.raises(ConfigError, match="loss_type"):
        DPOConfig(loss_type="kto")
    with pytest.raises(ConfigError, match="beta"):
        DPOConfig(beta=0)
    with pytest.raises(ConfigError, match="label_smoothing"):
        DPOConfig(label_smoothing=0.5)


CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64, max_seq_len=64)


def test_completion_logps_equal_plain_forward():
    model = build_model(CFG, seed=1)
    prompts, comps = [[1, 2, 3], [4, 5], [6]], [[7], [8, 9, 10], [11, 12]]
    got = completion_logps(model, prompts, comps, pad_id=0)
    for i, (p, c) in enumerate(zip(prompts, comps)):
        seq = torch.tensor([p + c])
        lp = torch.log_softmax(model(seq[:, :-1]), -1)[0]
        want = sum(lp[len(p) - 1 + j, t] for j, t in enumerate(c))
        assert got[i].item() == pytest.approx(want.item(), abs=1e-5)


def test_dpo_steps_raise_margin_on_single_token_pairs():
    model = build_model(CFG, seed=2)
    pairs = {"prompt_ids": [[1, 2, 3 + i % 5] for i in range(16)], "chosen_ids": [[10 + i % 3] for i in range(16)],
             "rejected_ids": [[20 + i % 4] for i in range(16)]}
    with torch.no_grad():
        n = len(pairs["prompt_ids"])
        ref = completion_logps(model, pairs["prompt_ids"] * 2, pairs["chosen_ids"] + pairs["rejected_ids"])
    pairs["ref_chosen_logp"], pairs["ref_rejected_logp"] = ref[:n].tolist(), ref[n:].tolist()
    cfg = DPOConfig(beta=0.5, train=TrainConfig(batch_size=16, micro_batch_size=8, steps=10, lr=3e-3, warmup_steps=1))
    opt = make_optimizer(model, cfg.train)
    loader = PairLoader(pairs, 16)
    outs = [dpo_step(model, opt, loader.next_batch(0, 1, 8), s, cfg, pad_id=0, device="cpu") for s in range(10)]
    assert outs[0]["loss"] == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(0.0)).item(), abs=1e-5)
    assert outs[-1]["reward_margin"] > 0.5 and outs[-1]["reward_accuracy"] == 1.0
    assert outs[-1]["loss"] < outs[0]["loss"]


def test_sft_weight_keeps_the_chosen_side_up():
    """DPO alone may raise the margin by pushing both sides down; the NLL term (RPO) keeps the
    chosen log-prob from falling."""
    def run(w):
        model = build_model(CFG, seed=5)
        pairs = {"prompt_ids": [[1, 2, 3 + i % 5] for i in range(16)], "chosen_ids": [[10 + i % 3] for i in range(16)],
                 "rejected_ids": [[20 + i % 4] for i in range(16)]}
        with torch.no_grad():
            ref = completion_logps(model, pairs["prompt_ids"] * 2, pairs["chosen_ids"] + pairs["rejected_ids"])
        pairs["ref_chosen_logp"], pairs["ref_rejected_logp"] = ref[:16].tolist(), ref[16:].tolist()
        cfg = DPOConfig(beta=0.1, sft_weight=w, train=TrainConfig(batch_size=16, micro_batch_size=16, steps=15,
                                                                   lr=3e-3, warmup_steps=1))
        opt = make_optimizer(model, cfg.train)
        loader = PairLoader(pairs, 16)
        for s in range(15):
            dpo_step(model, opt, loader.next_batch(0, 1, 16), s, cfg, pad_id=0, device="cpu")
        with torch.no_grad():
            return (completion_logps(model, pairs["prompt_ids"], pairs["chosen_ids"]).mean()
                    - torch.tensor(pairs["ref_chosen_logp"]).mean()).item()
    assert run(1.0) > run(0.0) and run(1.0) > 0
