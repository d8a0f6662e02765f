"""Ray Train overhead on CPU: tokens/s of the same model, data and batch under Ray Train (one
worker, so the only difference is Ray) against the bare loop of phi4ray.train.step, in one run.
Goal: overhead <= 10% (ratio >= 0.9).

Run: .venv/bin/python benchmarks/train_overhead.py [--steps 30]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from phi4ray.model.config import model_preset
from phi4ray.model.decoder import build_model
from phi4ray.train.step import SequenceLoader, TrainConfig, make_optimizer, train_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args()
    seq = args.seq_len
    cfg = model_preset("tiny").replace(max_seq_len=seq)
    # log rarely and checkpoint only at the end: the comparison is of the step loop itself
    tc = TrainConfig(seq_len=seq, batch_size=8, micro_batch_size=4, steps=args.steps, warmup_steps=2,
                     log_every=args.steps, checkpoint_every=args.steps)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 5000, size=(256, seq + 1)).astype(np.int32)
    doc_ids = np.zeros_like(tokens)

    # bare loop over the same steps; like the worker's figure, it includes the first step
    model = build_model(cfg, seed=0)
    opt = make_optimizer(model, tc)
    loader = SequenceLoader.from_arrays(tokens, doc_ids, tc.batch_size)
    t0 = time.perf_counter()
    for step in range(args.steps):
        train_step(model, opt, loader.next_batch(0, 1, tc.micro_batch_size, "cpu"), step, tc)
    bare_tps = args.steps * tc.batch_size * seq / (time.perf_counter() - t0)

    import ray

    from actors.train.trainer import run_training
    from phi4ray.train.jobs import TrainJob
    from phi4ray.train.metrics import read_metrics

    run = Path(tempfile.mkdtemp(prefix="phi4ray-overhead-"))
    (run / "tokens").mkdir()
    pq.write_table(pa.table({"tokens": list(tokens), "doc_ids": list(doc_ids)}), run / "tokens" / "part-0.parquet")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    run_training(TrainJob("pretrain", cfg, tc, str(run / "tokens"), str(run)), num_workers=1)
    wall = time.perf_counter() - t0
    ray.shutdown()
    m = read_metrics(run, "pretrain")[-1]
    ray_tps = m["tokens_per_s"]  # measured inside the worker over all steps (one log at the end)
    print(f"tiny model, seq {seq}, batch {tc.batch_size}, {args.steps} steps, torch threads {torch.get_num_threads()}")
    print(f"bare loop          : {bare_tps:8.1f} tok/s")
    print(f"Ray Train, 1 worker: {ray_tps:8.1f} tok/s   ratio {ray_tps / bare_tps:.2f} (goal >= 0.90)")
    print(f"Ray Train wall time incl. start-up and final checkpoint/export: {wall:.1f}s")
    print(json.dumps({"bare_tps": bare_tps, "ray_tps": ray_tps, "ratio": ray_tps / bare_tps}))
    shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
