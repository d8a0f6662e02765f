"""Peak memory of starting training from an HF folder, per rank: a ~1B-parameter model in fp32
(~4 GB) on 2 CPU gloo workers (torch.multiprocessing, no Ray).

- sharded: phi4ray.train.sharded_io.load_sharded (meta model -> FSDP2 -> each rank reads its rows);
  then the streamed export (phi4ray.model.hf.export_hf on both ranks, rank 0 writes), checked byte for
  byte against the source folder;
- full: the path it replaces, import_hf of the whole model on every rank, then FSDP2.

Each figure is the worker's peak RSS during the phase (VmHWM, reset through /proc/self/clear_refs)
minus its RSS when the phase started, over the full fp32 model size. Goal: sharded load <= 0.75.

Run: .venv/bin/python benchmarks/load_memory.py [--layers 18] [--no-full]
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from phi4ray.model.config import ModelConfig
from phi4ray.model.decoder import Phi4
from phi4ray.model.hf import export_hf, import_hf
from phi4ray.model.phi4_tokenizer import phi4_tokenizer
from phi4ray.train.parallelize import parallelize
from phi4ray.train.sharded_io import load_sharded
from phi4ray.train.step import TrainConfig

SHARD_BYTES = 2**30  # a multi-file folder with an index, like published checkpoints


def model_config(layers: int) -> ModelConfig:
    # 18 layers: 0.85B in the blocks + 0.13B in the two 32000 x 2048 embeddings
    return ModelConfig(dim=2048, n_layers=layers, n_heads=16, n_kv_heads=8, ffn_dim=5632, vocab_size=32000,
                       max_seq_len=2048, rope_theta=10_000.0)


def _status(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


class Peak:
    """Peak RSS of this process inside the block, above its RSS at the start."""

    def __enter__(self) -> "Peak":
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        self.start, self.t0 = _status("VmRSS"), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.bytes, self.s = _status("VmHWM") - self.start, time.perf_counter() - self.t0


def _make_source(cfg: ModelConfig, out: str) -> None:
    """Run in its own process, so that the 4 GB it holds goes back to the OS when it exits."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Phi4(cfg)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.02)
    export_hf(model, out, phi4_tokenizer(), max_shard_bytes=SHARD_BYTES)


def _worker(rank: int, world: int, port: int, mode: str, cfg: ModelConfig, src: str, work: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    tc = TrainConfig()
    with Peak() as load:
        if mode == "sharded":
            model = load_sharded(cfg, src, tc, "cpu", distributed=True)
        else:
            model = parallelize(import_hf(src, dtype=torch.float32), tc, distributed=True)
        dist.barrier()
    out = {"load_peak": load.bytes, "load_s": load.s, "held": _status("VmRSS") - load.start}
    if mode == "sharded":
        with Peak() as export:
            export_hf(model, Path(work) / "export", phi4_tokenizer(), max_shard_bytes=SHARD_BYTES)
        out |= {"export_peak": export.bytes, "export_s": export.s}
    Path(work, f"{mode}-{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def _spawn(mode: str, cfg: ModelConfig, src: str, work: str) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, mode, cfg, src, work), nprocs=2, join=True)
    return [json.loads(Path(work, f"{mode}-{r}.json").read_text()) for r in range(2)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--no-full", action="store_true", help="skip the full-import baseline (2 x the model in RAM)")
    args = ap.parse_args()
    cfg = model_config(args.layers)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in Phi4(cfg).parameters())
    full = 4 * n_params
    work = tempfile.mkdtemp(prefix="phi4ray-loadmem-")
    try:
        src = str(Path(work) / "src")
        t0 = time.perf_counter()
        maker = mp.get_context("spawn").Process(target=_make_source, args=(cfg, src))
        maker.start()
        maker.join()
        if maker.exitcode:
            raise SystemExit(f"writing the source model failed (exit {maker.exitcode})")
        print(f"model: {n_params / 1e9:.3f}B parameters, fp32 {full / 2**30:.2f} GiB, "
              f"{len(list(Path(src).glob('*.safetensors')))} safetensors files, written in {time.perf_counter() - t0:.0f} s")
        rows = [(m, r, res) for m in ["sharded"] + ([] if args.no_full else ["full"])
                for r, res in enumerate(_spawn(m, cfg, src, work))]
        names = sorted(os.listdir(src))
        same = filecmp.cmpfiles(src, Path(work) / "export", names, shallow=False)[0] == names
        print(f"\n{'path':<8} {'rank':>4} {'load peak GiB':>14} {'/ fp32 model':>13} {'held after':>11} {'load s':>7}"
              f" {'export peak GiB':>16} {'/ fp32 model':>13} {'export s':>9}")
        for mode, rank, res in rows:
            line = (f"{mode:<8} {rank:>4} {res['load_peak'] / 2**30:>14.2f} {res['load_peak'] / full:>13.3f}"
                    f" {res['held'] / full:>11.3f} {res['load_s']:>7.1f}")
            if "export_peak" in res:
                line += f" {res['export_peak'] / 2**30:>16.2f} {res['export_peak'] / full:>13.3f} {res['export_s']:>9.1f}"
            print(line)
        worst = max(res["load_peak"] for mode, _, res in rows if mode == "sharded") / full
        print(f"\nsharded load: worst rank peak / fp32 model = {worst:.3f} (goal <= 0.75): "
              f"{'PASS' if worst <= 0.75 else 'FAIL'}")
        print(f"streamed export equals the source folder byte for byte: {same}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
