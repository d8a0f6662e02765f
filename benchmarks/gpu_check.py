"""One-command check for a lent GPU: torch + phi4ray only (no Ray, no vLLM, no transformers).

1. train: the `small` preset's training step in bf16 (flex document attention, chunked loss,
   activation checkpointing) at seq len 4096: tokens/s and MFU against the card's dense bf16 peak.
2. long_step: peak memory of a 16K-token training step with the same settings.
3. attention: the document attention the library picks on this device (flex on CUDA) against the
   dense masked SDPA reference, forward and backward (q, k, v grads), fp32.
Packed rows hold 8 documents each, so document masking is exercised. A failing section (e.g. OOM)
is recorded in the JSON and the rest still run; the exit status is 1 if any check failed.

GPU (one H100, a few minutes):  python benchmarks/gpu_check.py --out gpu_check.json
CPU (tiny preset, 8K vocab, fp32): python benchmarks/gpu_check.py --device cpu --out gpu_check_cpu.json
On CPU flex_attention has no backward: flex is checked forward only (eager) and the CPU path
("segments") forward and backward; memory is the process's peak RSS, not CUDA memory.
benchmarks/train_step.py measures single-document rows; this script packs documents.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root for `phi4ray`

from phi4ray.model import losses  # noqa: E402
from phi4ray.model.attention import DenseDocuments, FlexDocuments, document_attention  # noqa: E402
from phi4ray.model.config import model_preset  # noqa: E402
from phi4ray.model.decoder import build_model  # noqa: E402
from phi4ray.train.parallelize import parallelize  # noqa: E402
from phi4ray.train.step import TrainConfig, make_optimizer, peak_flops, train_step  # noqa: E402

DOCS_PER_ROW = 8
ATTN_TOL = 1e-3  # fp32: max abs error <= ATTN_TOL * max(1, max |reference|), per tensor
FORBIDDEN = ("ray", "vllm", "transformers")


def packed_doc_ids(rows: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """(rows, width) document ids 0..DOCS_PER_ROW-1 in consecutive runs of random lengths."""
    cuts = torch.stack([torch.randperm(width - 1, generator=gen)[:DOCS_PER_ROW - 1] + 1 for _ in range(rows)])
    return (torch.arange(width)[None, :, None] >= cuts[:, None, :]).sum(-1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train(device, cfg, dtype, seq_len, micro, steps, warmup, compile_) -> dict:
    """`steps` timed training steps after `warmup` ones, on one fixed batch of packed rows."""
    cfg = cfg.replace(max_seq_len=max(cfg.max_seq_len, seq_len))
    tc = TrainConfig(seq_len=seq_len, batch_size=micro, micro_batch_size=micro, steps=warmup + steps, dtype=dtype,
                     compile=compile_, activation_checkpointing=True, warmup_steps=1)
    model = parallelize(build_model(cfg, device=device, seed=0), tc, distributed=False)
    opt = make_optimizer(model, tc)
    g = torch.Generator().manual_seed(0)
    batch = [(torch.randint(0, cfg.vocab_size, (micro, seq_len + 1), generator=g).to(device),
              packed_doc_ids(micro, seq_len + 1, g).to(device), None)]
    for step in range(warmup):
        train_step(model, opt, batch, step, tc)
    sync(device)
    t0 = time.perf_counter()
    for step in range(steps):
        out = train_step(model, opt, batch, warmup + step, tc)
    sync(device)
    tps = steps * micro * seq_len / (time.perf_counter() - t0)
    peak = peak_flops(device)
    mfu = cfg.flops_per_token(seq_len) * tps / peak if peak else None
    chunk_rows = max(1, losses.CHUNK_ELEMENTS // cfg.vocab_size)
    return {"model": f"dim {cfg.dim}, {cfg.n_layers} layers, vocab {cfg.vocab_size}", "params": cfg.num_params(),
            "dtype": dtype, "seq_len": seq_len, "micro_batch": micro,
            "docs_per_row": DOCS_PER_ROW, "steps": steps, "loss_chunks": math.ceil(micro * seq_len / chunk_rows),
            "tokens_per_s": tps, "mfu": mfu, "loss": out["loss"],
            "ok": math.isfinite(tps) and tps > 0 and math.isfinite(out["loss"])}


def long_step(device, cfg, dtype, seq_len, compile_) -> dict:
    """Peak memory over two steps (the second holds the optimizer state) of one row of seq_len tokens."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    r = train(device, cfg, dtype, seq_len, micro=1, steps=1, warmup=1, compile_=compile_)
    if device.type == "cuda":
        r.update(peak_memory="torch.cuda.max_memory_allocated", peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    else:  # ru_maxrss is KiB on Linux: the whole process's peak so far, not this step alone
        r.update(peak_memory="process peak RSS (ru_maxrss)", peak_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return r


def attention(device, tiny) -> dict:
    """Each plan against DenseDocuments: output and q/k/v grads for one random upstream grad (GQA shapes)."""
    B, H, KV, T, hd = (2, 4, 2, 256, 64) if tiny else (2, 16, 4, 2048, 128)
    g = torch.Generator().manual_seed(1)
    ids = packed_doc_ids(B, T, g).to(device)
    q, k, v = (torch.randn(B, h, T, hd, generator=g).to(device).requires_grad_() for h in (H, KV, KV))
    dout = torch.randn(B, H, T, hd, generator=g).to(device)

    def run(plan, backward):
        out = plan(q, k, v) if backward else plan(q.detach(), k.detach(), v.detach())
        grads = torch.autograd.grad(out, (q, k, v), dout) if backward else ()
        return dict(zip(("out", "dq", "dk", "dv"), [out.detach(), *grads]))

    ref = run(DenseDocuments(ids), True)
    auto = document_attention(ids)  # what the model runs on this device: flex on CUDA, segments on CPU
    plans = {type(auto).__name__: (auto, True)}
    if device.type == "cpu":  # eager flex: forward only (no CPU backward)
        plans["FlexDocuments (eager, forward only)"] = (FlexDocuments(ids, compiled=False), False)
    results = {}
    for name, (plan, backward) in plans.items():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            got = run(plan, backward)
        sync(device)
        err = {t: float((got[t] - ref[t]).abs().max()) for t in got}
        ok = all(err[t] <= ATTN_TOL * max(1.0, float(ref[t].abs().max())) for t in got)
        results[name] = {"backward": backward, "max_abs_err": err, "ok": ok}
    return {"dtype": "float32", "shape_BHKVThd": [B, H, KV, T, hd], "tolerance": ATTN_TOL, "plans": results,
            "ok": all(r["ok"] for r in results.values())}


def section(fn, *args) -> dict:
    t0 = time.perf_counter()
    try:
        r = fn(*args)
    except Exception as e:  # an OOM or a kernel error: record it, run the other sections
        traceback.print_exc()
        r = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
    gc.collect()  # the section's model and optimizer go before the next one starts
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {**r, "seconds": round(time.perf_counter() - t0, 1)}


def table(r: dict) -> str:
    def row(name, text):
        s = r[name]
        return f"{name:<10} {'PASS' if s['ok'] else 'FAIL'} {s['seconds']:6.1f}s  {s['error'] if 'error' in s else text(s)}"

    def train_text(s):
        mfu = f"MFU {100 * s['mfu']:.1f}%" if s["mfu"] is not None else "MFU n/a (no known peak)"
        return (f"{s['tokens_per_s']:,.0f} tok/s, {mfu} ({r['preset']}, {s['dtype']}, seq {s['seq_len']} x {s['micro_batch']}, "
                f"{s['loss_chunks']} loss chunks, loss {s['loss']:.3f})")

    def attn_text(s):
        return "; ".join(f"{n}: " + " ".join(f"{t} {e:.1e}" for t, e in p["max_abs_err"].items())
                         for n, p in s["plans"].items()) + f" (fp32 vs dense, tol {s['tolerance']:g})"

    lines = [f"{r['device']} | torch {r['torch']} | {'tiny' if r['tiny'] else 'full'} shapes",
             row("train", train_text),
             row("long_step", lambda s: f"{s['peak_gib']:.2f} GiB {s['peak_memory']} (seq {s['seq_len']} x 1, {s['dtype']})"),
             row("attention", attn_text),
             f"forbidden modules imported: {r['forbidden_imports'] or 'none'}  ->  {'ALL PASS' if r['ok'] else 'FAILED'}"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (implied on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10 full, 2 tiny)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile each block")
    ap.add_argument("--out", default="gpu_check.json")
    a = ap.parse_args()
    device = torch.device(a.device)
    tiny = a.tiny or device.type == "cpu"
    preset, dtype = ("tiny" if tiny else "small"), ("bfloat16" if device.type == "cuda" else "float32")
    seq, long_seq, micro = (128, 256, 2) if tiny else (4096, 16384, 4)
    cfg = model_preset(preset)
    if tiny:  # an 8K vocabulary (the 100K one is most of the tiny preset's CPU time), and a few rows
        cfg = cfg.replace(vocab_size=8192)  # per loss chunk, so the chunked (checkpointed) loss runs too
        losses.CHUNK_ELEMENTS = 64 * cfg.vocab_size
    steps, warmup = a.steps or (2 if tiny else 10), (1 if device.type == "cpu" else 2)
    r = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
         "tiny": tiny, "preset": preset + (" (vocab 8192)" if tiny else ""),
         "train": section(train, device, cfg, dtype, seq, micro, steps, warmup, a.compile),
         "long_step": section(long_step, device, cfg, dtype, long_seq, a.compile),
         "attention": section(attention, device, tiny)}
    r["forbidden_imports"] = sorted(m for m in FORBIDDEN if m in sys.modules)
    r["ok"] = all(r[s]["ok"] for s in ("train", "long_step", "attention")) and not r["forbidden_imports"]
    print(table(r))
    print(json.dumps(r, indent=2))
    Path(a.out).write_text(json.dumps(r, indent=2) + "\n")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
