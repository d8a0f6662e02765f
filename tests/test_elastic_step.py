"""Any worker count trains the same step: FSDP2 over 1, 2 and 3 gloo processes (no Ray) on a batch
of 8 rows, micro-batches of 2, so 3 workers take 3/3/2 rows and one pads a zero-weight pass."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from phi4ray.data.row_stream import micro_slices
from phi4ray.model.config import model_preset
from phi4ray.model.decoder import build_model
from phi4ray.run.errors import ConfigError
from phi4ray.train.parallelize import parallelize
from phi4ray.train.step import SequenceLoader, TrainConfig, train_step

SEQ, STEPS = 16, 3
TC = TrainConfig(seq_len=SEQ, batch_size=8, micro_batch_size=2, steps=STEPS, warmup_steps=1, lr=1e-2)


def _rows():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 512, size=(40, SEQ + 1)).astype(np.int32)
    doc_ids = (np.arange(SEQ + 1) >= rng.integers(3, SEQ, size=(40, 1))).astype(np.int32)
    return tokens, doc_ids


def _worker(rank: int, world: int, port: int, out: str, sync_every_pass: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    import phi4ray.train.step as train

    if sync_every_pass:  # the reference: reduce-scatter after every backward
        train.set_gradient_sync = lambda model, on: None
    torch.manual_seed(0)
    cfg = model_preset("tiny").replace(n_layers=2, vocab_size=512, max_seq_len=SEQ)
    model = parallelize(build_model(cfg, seed=0), TC, distributed=True)
    assert hasattr(model, "set_requires_gradient_sync")  # FSDP2: the deferred sync is real here
    # plain SGD: the weights are linear in the gradients, so they compare to 1e-5. (After AdamW's
    # first steps, ~sign(g), an element whose gradient is at rounding level may step either way.)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = SequenceLoader.from_arrays(*_rows(), TC.batch_size, seed=1)

    def reduce(t):
        dist.all_reduce(t)

    losses = []
    for step in range(STEPS):
        mbs = loader.next_batch(rank, world, TC.micro_batch_size, "cpu")
        assert len(mbs) == TC.micro_steps(world)
        losses.append(train_step(model, opt, mbs, step, TC, reduce)["loss"])
    full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    if rank == 0:
        torch.save({"losses": losses, "weights": full}, out)
    dist.destroy_process_group()


def _train(world: int, tmp_path, sync_every_pass: bool = False) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / f"w{world}-{sync_every_pass}.pt")
    mp.spawn(_worker, args=(world, port, out, sync_every_pass), nprocs=world, join=True)
    return torch.load(out)


def test_micro_slices_pad_the_smaller_shares():
    assert [len(micro_slices(n, 8, 3, 2)) for n in (3, 3, 2)] == [2, 2, 2]
    assert micro_slices(2, 8, 3, 2) == [(slice(0, 2), 1.0), (slice(0, 2), 0.0)]
    assert micro_slices(3, 8, 3, 2) == [(slice(0, 2), 1.0), (slice(2, 3), 1.0)]
    assert [TC.micro_steps(w) for w in (1, 2, 3, 8)] == [4, 2, 2, 1]
    with pytest.raises(ConfigError, match="batch_size=8 leaves some of 9 workers without a row"):
        TC.micro_steps(9)


def test_one_two_and_three_workers_train_the_same_steps(tmp_path):
    runs = {w: _train(w, tmp_path) for w in (1, 2, 3)}
    ref = runs[1]
    for w in (2, 3):
        assert runs[w]["losses"] == pytest.approx(ref["losses"], rel=1e-5, abs=1e-6)
        diff = max((runs[w]["weights"][k] - ref["weights"][k]).abs().max().item() for k in ref["weights"])
        assert diff < 1e-5, (w, diff)
    # syncing gradients only on the last pass changes nothing but the traffic
    every = _train(2, tmp_path, sync_every_pass=True)
    assert every["losses"] == pytest.approx(runs[2]["losses"], rel=1e-6)
    assert max((every["weights"][k] - runs[2]["weights"][k]).abs().max().item() for k in ref["weights"]) < 1e-6
