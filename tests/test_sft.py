"""SFT data: conversations packed whole, one document each, loss on assistant tokens only; bad
conversation files fail naming the line; a few SFT steps lower the held-out loss."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from phi4ray.model.config import model_preset
from phi4ray.model.decoder import build_model, document_causal_mask
from phi4ray.model.phi4_tokenizer import IM_END, PAD, phi4_tokenizer
from phi4ray.toy.arith import ArithConfig, make_problems, sft_conversation
from phi4ray.train.sft import heldout_loss, pack_conversations, read_conversations
from phi4ray.train.step import SequenceLoader, TrainConfig, make_optimizer, train_step


@pytest.fixture(scope="module")
def tok():
    return phi4_tokenizer()


def test_conversations_are_packed_whole_with_assistant_only_mask(tok):
    convs = [tok.render_chat(sft_conversation(p)) for p in make_problems(40, 0)]
    convs.append(tok.render_chat([{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "y"}]))
    packed = pack_conversations(convs, 128, PAD)
    assert packed.too_long == [(40, len(convs[40].ids))]
    # every conversation appears exactly once, contiguous, with its own doc id and its own mask
    found = 0
    for r in range(len(packed.tokens)):
        row, docs, mask = packed.tokens[r], packed.doc_ids[r], packed.loss_mask[r]
        for d in np.unique(docs):
            sel = docs == d
            ids = row[sel].tolist()
            if all(t == PAD for t in ids):
                assert mask[sel].sum() == 0  # padding trains nothing
                continue
            c = next(c for c in convs[:40] if c.ids == ids)
            assert mask[sel].tolist() == c.loss_mask
            found += 1
    assert found == 40
    assert packed.stats["trained_tokens"] + sum(int(packed.loss_mask[r, 0]) for r in range(len(packed.tokens))) \
        == sum(sum(c.loss_mask) for c in convs[:40])
    # assistant content and its <|im_end|> are trained; the user's are not
    c = convs[0]
    trained = [t for t, m in zip(c.ids, c.loss_mask) if m]
    assert trained[-1] == IM_END and tok.decode(trained[:-1]) == make_problems(40, 0)[0]["solution"]
    # attention never crosses from one conversation into another
    m = document_causal_mask(torch.from_numpy(packed.doc_ids[:1]).long())[0, 0]
    d = packed.doc_ids[0]
    cross = torch.from_numpy(d[:, None] != d[None, :])
    assert not (m & cross).any()


def test_read_conversations_errors(tmp_path):
    good = tmp_path / "c.jsonl"
    good.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n\n")
    assert len(read_conversations(str(good))) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + "{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:3"):
        read_conversations(str(bad))
    no_reply = tmp_path / "nr.jsonl"
    no_reply.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match="nr.jsonl:1: a conversation needs"):
        read_conversations(str(no_reply))


def test_sft_steps_lower_heldout_loss(tok):
    arith = ArithConfig(n_terms=2)
    train = [tok.render_chat(sft_conversation(p)) for p in make_problems(120, 0, arith)]
    held = [tok.render_chat(sft_conversation(p)) for p in make_problems(20, 0, arith, split="test")]
    cfg = model_preset("tiny").replace(n_layers=2, dim=128, n_heads=4, n_kv_heads=2, ffn_dim=256)
    model = build_model(cfg, seed=0)
    before = heldout_loss(model, held, 64, PAD)
    packed = pack_conversations(train, 64, PAD)
    tc = TrainConfig(seq_len=64, batch_size=8, micro_batch_size=8, steps=25, lr=1e-2, warmup_steps=3)
    opt = make_optimizer(model, tc)
    loader = SequenceLoader.from_arrays(packed.tokens, packed.doc_ids, tc.batch_size, loss_mask=packed.loss_mask)
    for s in range(tc.steps):
        model.train()
        train_step(model, opt, loader.next_batch(0, 1, 8, "cpu"), s, tc)
    after = heldout_loss(model, held, 64, PAD)
    assert after < 0.5 * before, (before, after)
