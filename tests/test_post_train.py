"""SFT and DPO on Ray Train for real, and the reference pass on Ray Data."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from actors.train.trainer import run_training
from phi4ray.data.row_stream import RowOrder
from phi4ray.model.config import model_preset
from phi4ray.model.decoder import build_model
from phi4ray.model.hf import export_hf, import_hf
from phi4ray.model.phi4_tokenizer import PAD, phi4_tokenizer
from phi4ray.toy.arith import ArithConfig, make_problems, sft_conversation
from phi4ray.train.dpo import DPOConfig, PairLoader, completion_logps, dpo_step, load_pairs
from phi4ray.train.jobs import TrainJob
from phi4ray.train.metrics import read_metrics
from phi4ray.train.sft import pack_conversations
from phi4ray.train.step import TrainConfig, make_optimizer

pytestmark = pytest.mark.ray
CFG = model_preset("tiny").replace(n_layers=2, dim=128, n_heads=4, n_kv_heads=2, ffn_dim=256, max_seq_len=128)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    return export_hf(build_model(CFG, seed=3), tmp_path_factory.mktemp("base"), phi4_tokenizer())


def test_sft_on_ray_train_trains_assistant_tokens_only(ray_cluster, base_model, tmp_path):
    tok = phi4_tokenizer()
    convs = [tok.render_chat(sft_conversation(p)) for p in make_problems(120, 0, ArithConfig(n_terms=2))]
    packed = pack_conversations(convs, 64, PAD)
    rows = tmp_path / "sft_tokens"
    rows.mkdir()
    pq.write_table(pa.table({"tokens": list(packed.tokens), "doc_ids": list(packed.doc_ids),
                             "loss_mask": list(packed.loss_mask)}), rows / "shard_00000.parquet")
    tc = TrainConfig(seq_len=64, batch_size=8, micro_batch_size=4, steps=8, lr=1e-2, warmup_steps=2,
                     checkpoint_every=4, log_every=2)
    job = TrainJob("sft", CFG, tc, str(rows), str(tmp_path), init_from=str(base_model), loss_mask=True)
    assert run_training(job, num_workers=2).error is None
    m = read_metrics(tmp_path, "sft")
    assert m[-1]["loss"] < 0.7 * m[0]["loss"]
    # the tokens counted per step are the assistant tokens of that step's 8 rows, not all 8 x 64
    order = RowOrder(len(packed.tokens), tc.batch_size, seed=tc.seed)
    trained = [int(packed.loss_mask[order.next_rows()][:, 1:].sum()) for _ in range(tc.steps)]
    assert [x["step_tokens"] for x in m] == [trained[x["step"] - 1] for x in m]
    assert all(t < tc.batch_size * 64 for t in trained)
    assert (tmp_path / "models" / "sft" / "model.safetensors").is_file()


def _pairs(tmp_path, n=32):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        prompt = rng.integers(10, 500, size=rng.integers(4, 12)).tolist()
        single = i % 2 == 0  # half PTS-style single-token pairs, half full responses
        c = [int(rng.integers(10, 500))] if single else rng.integers(10, 500, size=rng.integers(2, 6)).tolist()
        r = [int(rng.integers(10, 500))] if single else rng.integers(10, 500, size=rng.integers(2, 6)).tolist()
        rows.append({"pair_id": str(i), "query_id": f"q{i}", "prompt_ids": prompt, "chosen_ids": c, "rejected_ids": r})
    d = tmp_path / "pairs"
    d.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), d / "pairs.parquet")
    return d


def test_reference_pass_then_dpo_resumes_exactly(ray_cluster, base_model, tmp_path):
    from actors.train.reference import add_reference_logps

    pairs_dir = _pairs(tmp_path)
    assert add_reference_logps(pairs_dir, base_model, tmp_path / "ref", concurrency=1, batch_size=8) == 32
    pairs = load_pairs(str(tmp_path / "ref"))
    ref = import_hf(base_model).eval()
    with torch.no_grad():
        want = completion_logps(ref, pairs["prompt_ids"], pairs["chosen_ids"], PAD)
    np.testing.assert_allclose(pairs["ref_chosen_logp"], want.numpy(), rtol=1e-5, atol=1e-5)

    dpo = DPOConfig(beta=0.5, train=TrainConfig(batch_size=8, micro_batch_size=4, steps=6, lr=3e-3, warmup_steps=1,
                                                checkpoint_every=2, log_every=1))
    job = TrainJob("dpo", CFG, dpo.train, str(tmp_path / "ref"), str(tmp_path), init_from=str(base_model), dpo=dpo,
                   fail_once_at_step=3)
    assert run_training(job, num_workers=1).error is None
    m = read_metrics(tmp_path, "dpo")
    assert m[0]["loss"] == pytest.approx(np.log(2), abs=1e-4)  # policy == reference at step 0
    assert m[-1]["reward_margin"] > 0 and m[-1]["loss"] < m[0]["loss"]

    # the same steps without Ray: the resumed run's weights equal an uninterrupted plain loop's
    torch.manual_seed(dpo.train.seed)
    model = import_hf(base_model)
    opt = make_optimizer(model, dpo.train)
    loader = PairLoader(pairs, dpo.train.batch_size, seed=dpo.train.seed)
    for step in range(dpo.train.steps):
        dpo_step(model, opt, loader.next_batch(0, 1, 4), step, dpo, PAD, "cpu")
    got = import_hf(tmp_path / "models" / "dpo").state_dict()
    assert max((got[k] - v).abs().max().item() for k, v in model.state_dict().items()) < 1e-4
