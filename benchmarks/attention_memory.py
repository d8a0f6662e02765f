"""Peak memory of one training step (forward + backward, fp32, CPU) at a fixed token budget:
T=4096 x B vs T=512 x 8B.

Paths: `new`, the training path (per-document causal SDPA, chunked log-probs); `dense`, the same
with the (B, 1, T, T) document mask as the attention (the parity tests' reference); `old`, the step
before this change (dense mask and full fp32 logits).

`python benchmarks/attention_memory.py` prints each config's peak RSS growth over the step and the
T=4096 / T=512 ratio per path. Every config runs in a fresh subprocess: the step's peak is Linux's
VmHWM (reset through /proc/self/clear_refs just before the step) minus the RSS before it, which
sees torch's allocations where tracemalloc does not. Step times are CPU seconds (user + system)
of the process, steadier than wall time on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from phi4ray.model.config import model_preset
from phi4ray.model.decoder import build_model

PATHS = ("new", "dense", "old")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def packed_doc_ids(rows: int, seq_len: int, seed: int) -> torch.Tensor:
    """Rows of documents with log-normal lengths (median ~330 tokens), as packing makes them."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(rows, seq_len, dtype=torch.long)
    for r in range(rows):
        lengths = torch.empty(seq_len).log_normal_(5.8, 1.0, generator=g).long().clamp(min=1)
        ids = torch.repeat_interleave(torch.arange(seq_len), lengths)[:seq_len]
        out[r] = ids if len(ids) == seq_len else torch.cat([ids, ids.new_full((seq_len - len(ids),), ids[-1])])
    return out


def child(path: str, seq_len: int, rows: int, layers: int, vocab: int) -> dict:
    torch.manual_seed(0)
    cfg = model_preset("tiny").replace(n_layers=layers, vocab_size=vocab, max_seq_len=seq_len)
    model = build_model(cfg, seed=0)
    tokens = torch.randint(0, vocab, (rows, seq_len + 1))
    doc_ids = packed_doc_ids(rows, seq_len + 1, seed=0)

    def step(t, d):  # train.loss_fn's loss, with the attention implementation named
        if path == "old":
            logits = model(t[:, :-1], doc_ids=d[:, :-1], attention="dense")
            loss = F.cross_entropy(logits.float().flatten(0, 1), t[:, 1:].flatten())
        else:
            impl = "segments" if path == "new" else "dense"
            loss = -model(t[:, :-1], doc_ids=d[:, :-1], targets=t[:, 1:], attention=impl).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    step(tokens[:1, :65], doc_ids[:1, :65])  # warm-up: thread pools and kernels, not the measure
    rss = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    t0 = _cpu_s()
    step(tokens, doc_ids)
    return {"path": path, "seq_len": seq_len, "rows": rows, "peak_mib": (_status_kib("VmHWM") - rss) / 1024,
            "cpu_s": _cpu_s() - t0}


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192, help="tokens per step, the same for every T")
    ap.add_argument("--short", type=int, default=512)
    ap.add_argument("--long", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--child", nargs=2, metavar=("PATH", "SEQ_LEN"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        path, seq_len = args.child[0], int(args.child[1])
        print(json.dumps(child(path, seq_len, args.tokens // seq_len, args.layers, args.vocab)))
        return
    for seq_len in (args.short, args.long):
        if args.tokens % seq_len:
            sys.exit(f"--tokens={args.tokens} is not a multiple of T={seq_len}")
    peaks = {}
    for path in PATHS:
        for seq_len in (args.short, args.long):
            cmd = [sys.executable, __file__, "--child", path, str(seq_len), "--tokens", str(args.tokens),
                   "--layers", str(args.layers), "--vocab", str(args.vocab)]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            peaks[path, seq_len] = r["peak_mib"]
            print(f"{path:>5}  T={seq_len:<5} B={r['rows']:<3} step peak {r['peak_mib']:8.1f} MiB  "
                  f"({r['cpu_s']:.1f} CPU s)", flush=True)
    for path in PATHS:
        ratio = peaks[path, args.long] / peaks[path, args.short]
        grown = peaks[path, args.long] - peaks[path, args.short]
        print(f"{path:>5}: peak(T={args.long}) / peak(T={args.short}) = {ratio:.2f} ({grown:+.1f} MiB)")
    # B x T x T = tokens x T bytes: the mask grows with T at a fixed token budget
    print(f"(the dense path's bool mask: {args.tokens * args.short / 2 ** 20:.0f} MiB at T={args.short}, "
          f"{args.tokens * args.long / 2 ** 20:.0f} MiB at T={args.long})")


if __name__ == "__main__":
    main()
