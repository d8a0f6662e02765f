"""Make the `smol` preset's PTS query files: generated questions whose measured success for
SmolLM2-135M-Instruct lies in [P_MIN, P_MAX], split into train (PTS searches them) and held-out
(DPO's before/after success is measured on them).

    .venv/bin/python scripts/make_smol_queries.py [--candidates 400] [--samples 16]

Candidates come from the built-in `choice` generator (four-option questions with computable
answers; a 135M model gets its `arith` word problems right about never) at a seed the eval stage
does not use, so no query is an eval item. Each is rendered exactly as PTS renders it (the item's
prompt and its kind's answer instruction, the model's chat template), sampled `--samples` times
at temperature 1 from the imported model (phi4ray.posttrain.heldout, the measure DPO's
before/after uses; its logits equal transformers' and vLLM's, tests/test_import_smollm2.py) and
graded by the PTS oracle. Writes phi4ray/posttrain/data/smol_queries_{train,heldout}.jsonl
(EvalItem lines, the measured p in meta) and smol_queries_report.json. About 10 minutes on 2
CPU cores (the 135M model samples ~120 tokens/s there).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "phi4ray" / "posttrain" / "data"
P_MIN, P_MAX = 0.2, 0.8
SEED = 7  # not the eval stage's generator seed (1234)
CHUNK = 32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=192, help="at most this many generated questions")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=20)
    ap.add_argument("--want", type=int, default=40, help="stop once this many questions are in the band")
    ap.add_argument("--model", default="", help="an imported model folder (default: import SmolLM2 from its package)")
    args = ap.parse_args()

    from phi4ray.evals.generators import choice_suite
    from phi4ray.model.import_model import import_model
    from phi4ray.posttrain.heldout import success_on_queries
    from phi4ray.posttrain.queries import as_query
    from phi4ray.presets import SMOL_GGUF

    t0 = time.time()
    items = choice_suite(SEED, args.candidates).items
    kept, ps = {"train": [], "heldout": []}, []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(import_model(SMOL_GGUF, Path(tmp) / "smol", dtype="float32")[1])
        for start in range(0, len(items), CHUNK):  # in chunks: progress, and a stop once enough are kept
            chunk = items[start:start + CHUNK]
            rates = success_on_queries(model, [as_query(i) for i in chunk], args.samples, args.max_tokens,
                                       temperature=1.0, seed=SEED + start)["per_query"]
            for item in chunk:
                p = rates[item.id]
                ps.append(p)
                if P_MIN <= p <= P_MAX:
                    split = "heldout" if zlib.crc32(item.id.encode()) % 4 == 0 else "train"
                    row = item.to_json()
                    row["id"] = f"smolq-{item.id}"
                    row["meta"] = {**row.get("meta", {}), "p_smollm2": p, "samples": args.samples}
                    kept[split].append(row)
            print(f"{start + len(chunk)}/{len(items)} candidates, {sum(map(len, kept.values()))} in band, "
                  f"{time.time() - t0:.0f}s", flush=True)
            if sum(map(len, kept.values())) >= args.want:
                break
    OUT.mkdir(parents=True, exist_ok=True)
    for split, rows in kept.items():
        with open(OUT / f"smol_queries_{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    report = {"model": SMOL_GGUF, "kind": "choice", "generator_seed": SEED, "candidates": len(ps), "samples": args.samples,
              "max_tokens": args.max_tokens, "temperature": 1.0, "band": [P_MIN, P_MAX],
              "kept": {k: len(v) for k, v in kept.items()},
              "p_histogram": dict(sorted(Counter(round(p, 2) for p in ps).items())),
              "wall_s": round(time.time() - t0, 1)}
    (OUT / "smol_queries_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
