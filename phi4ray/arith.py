"""A toy verifiable domain for the tiny preset: chained single-digit arithmetic with known answers.

Why: Pivotal Token Search needs queries on which the policy succeeds sometimes (0.2 <= p <= 0.8)
and an oracle that checks its answers. A 4-layer CPU model never gets there on real math, but
after a minute of SFT it gets "7 + 5 - 3" right part of the time, and every intermediate result
in the worked solution is a place where one token can raise or sink p: real pivots, end to end.

Solutions are written the way the math oracle reads them: steps, then `\\boxed{answer}`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ArithConfig:
    n_terms: int = 3          # operands per question
    max_operand: int = 9      # operands are 1..max_operand
    ops: str = "+-"


def _problem(rng: random.Random, cfg: ArithConfig) -> tuple[list[int], list[str]]:
    nums = [rng.randint(1, cfg.max_operand) for _ in range(cfg.n_terms)]
    ops = [rng.choice(cfg.ops) for _ in range(cfg.n_terms - 1)]
    return nums, ops


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def question_text(nums: list[int], ops: list[str]) -> str:
    expr = str(nums[0]) + "".join(f" {o} {n}" for o, n in zip(ops, nums[1:]))
    return f"What is {expr}?"


def worked_solution(nums: list[int], ops: list[str]) -> tuple[str, int]:
    """Left-to-right steps, one per operator, then the boxed answer."""
    acc, steps = nums[0], []
    for op, n in zip(ops, nums[1:]):
        new = _apply(acc, op, n)
        steps.append(f"{acc} {op} {n} = {new}.")
        acc = new
    return " ".join(steps) + f" The answer is \\boxed{{{acc}}}.", acc


def make_problems(n: int, seed: int, cfg: ArithConfig = ArithConfig(), split: str = "train") -> list[dict]:
    """n distinct problems. Held-out splits never share a question with "train" (same generator,
    disjoint by construction: the question text decides the split by a stable hash)."""
    rng = random.Random(f"{seed}:{split}")
    out, seen = [], set()
    # the space is finite (9^3 * 2^2 = 2916 for the defaults): give up rather than loop forever
    for _ in range(n * 50):
        if len(out) == n:
            break
        nums, ops = _problem(rng, cfg)
        q = question_text(nums, ops)
        if q in seen or _split_of(q) != split:
            continue
        seen.add(q)
        sol, ans = worked_solution(nums, ops)
        out.append({"id": f"arith-{split}-{len(out):05d}", "question": q, "solution": sol, "answer": str(ans)})
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct {split} problems exist for {cfg}; asked for {n}")
    return out


def _split_of(question: str) -> str:
    import zlib

    # 80% train, 20% held out, decided by the text so that any seed keeps the sets disjoint
    return "train" if zlib.crc32(question.encode()) % 5 else "test"


def sft_conversation(problem: dict) -> list[dict]:
    return [{"role": "user", "content": problem["question"]},
            {"role": "assistant", "content": problem["solution"]}]


def success_rate(model, problems: list[dict], samples: int = 4, max_tokens: int = 48, temperature: float = 1.0,
                 seed: int = 0, batch: int = 64) -> float:
    """Mean oracle success of `samples` sampled answers per problem: p(success) averaged over the
    problems, the quantity PTS raises. Plain torch (no KV cache: fine for tiny models and
    short answers); the eval stage measures served models through the endpoint instead."""
    import torch

    from phi4ray.oracles import MathOracle
    from phi4ray.tokenizer import IM_END, get_tokenizer

    tok, check = get_tokenizer(), MathOracle()
    gen = torch.Generator().manual_seed(seed)
    jobs = [(p, tok.render_chat([{"role": "user", "content": p["question"]}], add_generation_prompt=True).ids)
            for p in problems for _ in range(samples)]
    wins = 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(jobs), batch):
            chunk = jobs[i:i + batch]
            width = max(len(ids) for _, ids in chunk)
            # left-pad so that every prompt ends at the same column; positions restart after the pad
            x = torch.full((len(chunk), width), tok.pad_id, dtype=torch.long)
            docs = torch.zeros_like(x)
            for r, (_, ids) in enumerate(chunk):
                x[r, width - len(ids):] = torch.tensor(ids)
                docs[r, width - len(ids):] = 1
            out = [[] for _ in chunk]
            for _ in range(max_tokens):
                last = torch.zeros(x.shape, dtype=torch.bool)
                last[:, -1] = True
                logits = model(x, doc_ids=docs, logits_mask=last).float()
                probs = torch.softmax(logits / max(temperature, 1e-5), -1)
                nxt = torch.multinomial(probs, 1, generator=gen)
                x, docs = torch.cat([x, nxt], 1), torch.cat([docs, docs[:, -1:]], 1)
                for r, t in enumerate(nxt[:, 0].tolist()):
                    out[r].append(t)
                if all(IM_END in o for o in out):
                    break
            for (p, _), o in zip(chunk, out):
                o = o[:o.index(IM_END)] if IM_END in o else o
                wins += check(tok.decode([t for t in o if t < tok.eot_id]), p["answer"])
    return wins / max(1, len(jobs))
