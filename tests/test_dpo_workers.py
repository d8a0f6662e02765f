"""DPO on FSDP2 over 2 gloo processes trains the same steps as over 1: the Ray trainer's own pieces
(actors.train.trainer.build_for_training, make_data: load_sharded from an HF folder, PairLoader.from_folder,
dpo_step) without Ray. A batch of 5 pairs in micro-batches of 2 mixes single-token PTS pairs with
multi-token full pairs, so the 2 ranks hold 3 and 2 pairs, different completion-token counts, and
the rank with 2 runs a zero-weight padding pass."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from phi4ray.model.config import model_preset
from phi4ray.model.decoder import build_model
from phi4ray.model.hf import export_hf, import_hf
from phi4ray.model.phi4_tokenizer import PAD, phi4_tokenizer
from phi4ray.train.dpo import DPOConfig, PairLoader, completion_logps
from phi4ray.train.jobs import TrainJob
from phi4ray.train.step import TrainConfig
from tests.conftest import free_port

STEPS, IDS = 4, 512  # pair token ids below IDS; the vocabulary stays the tokenizer's (PAD pads)
CFG = model_preset("tiny").replace(n_layers=2, dim=128, n_heads=4, n_kv_heads=2, ffn_dim=256, max_seq_len=64)
# sft_weight: the RPO term divides by each pair's chosen length, a second per-pair normalisation
DPO = DPOConfig(beta=0.5, sft_weight=0.5, train=TrainConfig(batch_size=5, micro_batch_size=2, steps=STEPS, lr=0.5,
                                                            warmup_steps=1, min_lr_ratio=1.0, weight_decay=0.0))


def _write_pairs(folder, base_dir, n=20) -> dict:
    """n pairs, even ones single-token, odd ones 2-7 tokens a side, with the base model's log-probs
    as the reference (the reference pass's columns); 2 files, as the reference pass writes several."""
    rng = np.random.default_rng(0)
    cols = {k: [] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
    for i in range(n):
        cols["prompt_ids"].append(rng.integers(10, IDS, size=rng.integers(3, 12)).tolist())
        for side in ("chosen_ids", "rejected_ids"):
            cols[side].append(rng.integers(10, IDS, size=1 if i % 2 == 0 else rng.integers(2, 8)).tolist())
    ref = import_hf(base_dir).eval()
    with torch.no_grad():
        cols["ref_chosen_logp"] = completion_logps(ref, cols["prompt_ids"], cols["chosen_ids"], PAD).tolist()
        cols["ref_rejected_logp"] = completion_logps(ref, cols["prompt_ids"], cols["rejected_ids"], PAD).tolist()
    folder.mkdir()
    for j, part in enumerate((slice(0, 12), slice(12, n))):
        pq.write_table(pa.table({k: v[part] for k, v in cols.items()}), folder / f"part-{j}.parquet")
    return cols


def _worker(rank: int, world: int, port: int, job: TrainJob, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from actors.train.trainer import _all_reduce, build_for_training, make_data  # the Ray workers' own steps

    model = build_for_training(job, torch.device("cpu"), distributed=True)
    assert hasattr(model, "set_requires_gradient_sync")  # FSDP2, also on 1 process
    # plain SGD: the weights are linear in the gradients, so they compare to 1e-5 (AdamW's first
    # steps are ~lr * sign(g), where a gradient at rounding level may step either way)
    opt = torch.optim.SGD(model.parameters(), lr=job.train.lr)
    loader, step_fn = make_data(job, torch.device("cpu"))
    log = []
    for step in range(STEPS):
        batch = loader.next_batch(rank, world, job.train.micro_batch_size, "cpu")
        mine = [(len(c), mb["weight"]) for mb in batch for c in mb["chosen_ids"]]  # (chosen length, pass weight)
        log.append({**step_fn(model, opt, batch, step, _all_reduce), "mine": mine})
    full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    gathered = [None] * world
    dist.all_gather_object(gathered, [x.pop("mine") for x in log])
    if rank == 0:
        torch.save({"log": log, "shares": gathered, "weights": full}, out)
    dist.destroy_process_group()


def _train(world: int, job: TrainJob, tmp_path) -> dict:
    out = str(tmp_path / f"w{world}.pt")
    mp.spawn(_worker, args=(world, free_port(), job, out), nprocs=world, join=True)
    return torch.load(out)


def test_two_workers_train_the_same_dpo_steps_as_one(tmp_path):
    base = export_hf(build_model(CFG, seed=3), tmp_path / "base", phi4_tokenizer())
    pairs = _write_pairs(tmp_path / "pairs", base)
    job = TrainJob("dpo", CFG, DPO.train, str(tmp_path / "pairs"), str(tmp_path), init_from=str(base), dpo=DPO)
    one, two = _train(1, job, tmp_path), _train(2, job, tmp_path)

    # what the batches held: the loader's global order, rank r taking rows r, r+2, ...; every step
    # mixes single-token and full pairs, the ranks hold 3 and 2 pairs and rank 1 pads one pass
    order = PairLoader(pairs, DPO.train.batch_size, seed=DPO.train.seed)
    for step, (r0, r1) in enumerate(zip(*two["shares"])):
        lengths = [len(pairs["chosen_ids"][i]) for i in order.next_rows()]
        real0, real1 = [n for n, w in r0 if w], [n for n, w in r1 if w]
        assert real0 == lengths[0::2] and real1 == lengths[1::2] and len(real0) == 3 and len(real1) == 2
        assert [w for _, w in r1] == [1.0, 1.0, 0.0, 0.0]  # 2 passes each: rank 1's second is padding
        assert min(lengths) == 1 and max(lengths) > 1, (step, lengths)

    losses = {w: [x["loss"] for x in run["log"]] for w, run in ((1, one), (2, two))}
    diff_loss = max(abs(a - b) for a, b in zip(losses[1], losses[2]))
    diff_w = max((two["weights"][k] - v).abs().max().item() for k, v in one["weights"].items())
    print(f"\nDPO 1 vs 2 workers: losses {losses[1]} vs {losses[2]}; max loss diff {diff_loss:.2e}, "
          f"max weight diff {diff_w:.2e}")
    assert diff_loss < 1e-5 and diff_w < 1e-5, (diff_loss, diff_w)
    for a, b in zip(one["log"], two["log"]):
        assert b["reward_margin"] == pytest.approx(a["reward_margin"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        assert b["tokens"] == a["tokens"]
    # step 0: policy == reference, every margin is rounding noise and so is its sign
    assert [b["reward_accuracy"] for b in two["log"][1:]] == [a["reward_accuracy"] for a in one["log"][1:]]
    # the steps trained (equal weights because nothing moved would prove nothing)
    moved = max((one["weights"][k] - v).abs().max().item() for k, v in import_hf(base).state_dict().items())
    assert moved > 1e-3, moved
