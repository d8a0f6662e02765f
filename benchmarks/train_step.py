"""The training step without Ray: tokens/s and MFU of one process (the lent GPU, or this CPU).

GPU: `python benchmarks/train_step.py --preset small --dtype bfloat16 --seq-len 4096 --micro 4`
reports MFU against the card's dense bf16 peak (goal >= 45% for `small` on one H100).
Needs only torch + phi4ray (no Ray, no vLLM), so it runs on the device machine as is.
"""
from __future__ import annotations

import argparse
import time

import torch

from phi4ray.model.config import model_preset
from phi4ray.model.decoder import build_model
from phi4ray.train.parallelize import parallelize
from phi4ray.train.step import TrainConfig, make_optimizer, peak_flops, train_step


def measure(preset: str, dtype: str, seq_len: int, micro: int, accum: int, steps: int, compile_: bool,
            ac: bool, n_layers: int | None = None) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = model_preset(preset)
    cfg = cfg.replace(max_seq_len=max(cfg.max_seq_len, seq_len), **({"n_layers": n_layers} if n_layers else {}))
    tc = TrainConfig(seq_len=seq_len, batch_size=micro * accum, micro_batch_size=micro, steps=steps + 2,
                     dtype=dtype, compile=compile_, activation_checkpointing=ac, warmup_steps=1)
    model = parallelize(build_model(cfg, device=device, seed=0), tc, distributed=False)
    opt = make_optimizer(model, tc)
    g = torch.Generator(device="cpu").manual_seed(0)
    batch = [(torch.randint(0, cfg.vocab_size, (micro, seq_len + 1), generator=g).to(device),
              torch.zeros(micro, seq_len + 1, dtype=torch.long, device=device), None) for _ in range(accum)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in range(2):  # warm-up (and compile)
        train_step(model, opt, batch, step, tc)
    sync()
    t0 = time.perf_counter()
    for step in range(steps):
        out = train_step(model, opt, batch, step + 2, tc)
    sync()
    dt = time.perf_counter() - t0
    tps = steps * micro * accum * seq_len / dt
    flops = cfg.flops_per_token(seq_len) * tps
    peak = peak_flops(device)
    return {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "preset": preset,
            "params": cfg.num_params(), "seq_len": seq_len, "tokens_per_s": tps, "tflops": flops / 1e12,
            "mfu": flops / peak if peak else None, "loss": out["loss"],
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--ac", action="store_true", help="activation checkpointing")
    ap.add_argument("--layers", type=int, default=None)
    a = ap.parse_args()
    r = measure(a.preset, a.dtype, a.seq_len, a.micro, a.accum, a.steps, a.compile, a.ac, a.layers)
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (no known peak for this device)"
    print(f"{r['device']} {r['preset']} ({r['params'] / 1e6:.0f}M params) seq {r['seq_len']}: "
          f"{r['tokens_per_s']:.0f} tok/s, {r['tflops']:.2f} TFLOP/s, MFU {mfu}, peak mem {r['peak_mem_gib']}")


if __name__ == "__main__":
    main()
