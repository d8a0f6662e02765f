"""A synthetic source that needs no teacher: toy-domain problems with worked solutions, each one
checked by the domain's oracle before it is kept (`synth.toy_problems`; 0, the default, is off).

Why: the tiny preset's teacher is its own random model, whose output every LLM step rejects, so
without this source its pretraining mixture had no synthetic share at all. The Phi-4 report's
synthetic math is verified, not trusted; so is this:
- generated: `make_problems(synth.toy_problems, seed + 4, arith)` from the "train" split:
  arithmetic with left-to-right steps, and "name a prime" answers written by the domain's noisy
  teacher (right `arith.teacher_accuracy` of the time);
- verified, never trusting the generator's own answer: a prime answer is checked for primality;
  an arithmetic solution's every step (`a op b = c.`) is recomputed, and its boxed answer is
  checked by the math oracle against the question's expression evaluated on its own (Python's
  precedence, not the generator's left-to-right steps: with `arith.ops` holding `*`, a
  left-to-right "solution" of 2 + 3 * 4 is wrong and is rejected). What fails is dropped with its
  reason (`not_prime`, `wrong_step`, `wrong_answer`), so generated = kept + rejected;
- decontaminated: no kept question is a held-out one (the toy eval suites at MAX_SIZE items, the
  SFT/DPO held-out questions, any arithmetic question of the "test" split, any held-out wording).
  The splits make that so by construction; `check_decontaminated` asserts it on every run.
Kept problems become documents in the `dialogue` form the LLM steps' outputs have, written to
RUN/synthetic/synthetic/toy.parquet, where the mixture's `synthetic` source reads them.

Seed + 4: pts draws its queries with seed + 1, the judge round seed + 2, plurality's arithmetic
seed + 3; SFT uses the seed itself (overlap with SFT's questions is harmless: both are training data).
"""
from __future__ import annotations

import ast
import json
import operator
import re
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from phi4ray.data.synth.steps import dialogue
from phi4ray.evals.generators import MAX_SIZE, builtin_suites
from phi4ray.run.errors import ConfigError
from phi4ray.toy.arith import PRIME_TEMPLATES, check_answer, make_problems, split_of
from phi4ray.toy.evals import TOY_SUITES
from phi4ray.verify.oracles import extract_answer

STEP = "toy"  # the `step` of its documents, and the name of its files in RUN/synthetic and dropped
SEED_OFFSET = 4
DROPPED_SCHEMA = pa.schema([("seed_id", pa.string()), ("question", pa.string()), ("solution", pa.string()),
                            ("answer", pa.string()), ("extracted", pa.string()), ("status", pa.string())])


@dataclass
class ToySource:
    docs: list[dict]      # kept problems as training documents (phi4ray.data.synth.outputs.OUT_SCHEMA)
    dropped: list[dict]   # the rest (DROPPED_SCHEMA), each with its reason
    report: dict = field(default_factory=dict)


def heldout_questions(cfg) -> set[str]:
    """Every held-out question a run asks of its models: the toy eval suites at MAX_SIZE (they are
    prefix-stable, so any `eval.size` is covered) and the SFT/DPO held-out questions."""
    suites = builtin_suites(cfg.eval.seed, MAX_SIZE, TOY_SUITES)
    asked = {item.prompt for s in suites for item in s.items}
    return asked | {p["question"] for p in make_problems(cfg.sft.heldout, cfg.seed, cfg.arith, split="test")}


def is_heldout(question: str, kind: str, heldout: set[str]) -> bool:
    if question in heldout:
        return True
    return question in PRIME_TEMPLATES["test"] if kind == "prime" else split_of(question) == "test"


def check_decontaminated(docs: list[dict], heldout: set[str]) -> None:
    """No document's question is a held-out question; raises naming a few, like check_counts."""
    hits = sorted({d["question"] for d in docs if is_heldout(d["question"], d["kind"], heldout)})
    if hits:
        raise AssertionError(f"synthesize: {STEP}: {len(hits)} held-out question(s) in the synthetic data, "
                             f"e.g. {hits[:3]}")


_STEP = re.compile(r"(-?\d+) ([-+*]) (-?\d+) = (-?\d+)\.")
_SYMBOLS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def evaluate(question: str) -> int | None:
    """The value of an arithmetic question's expression ("What is 3 + 4 * 2?" -> 11), computed from
    the text alone: integers and + - * only, else None."""
    m = re.fullmatch(r"What is (.+)\?", question)
    if not m:
        return None

    def value(node) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not toy arithmetic: {ast.dump(node)}")

    try:
        return value(ast.parse(m.group(1), mode="eval").body)
    except (SyntaxError, ValueError):
        return None


def verify(problem: dict) -> str:
    """"ok", or why the problem's solution is rejected (see the module's doc)."""
    solution = problem["solution"]
    if problem["answer"] == "prime":
        return "ok" if check_answer(solution, "prime") else "not_prime"
    for a, op, b, c in _STEP.findall(solution):
        if _SYMBOLS[op](int(a), int(b)) != int(c):
            return "wrong_step"
    truth = evaluate(problem["question"])
    return "ok" if truth is not None and check_answer(solution, str(truth)) else "wrong_answer"


def toy_source(cfg) -> ToySource:
    """Generate, verify and decontaminate `synth.toy_problems` problems (see the module's doc)."""
    n = cfg.synth.toy_problems
    try:
        problems = make_problems(n, cfg.seed + SEED_OFFSET, cfg.arith, split="train")
    except ValueError as e:  # the domain is finite: arith.* may leave fewer distinct problems than asked
        raise ConfigError(f"synth.toy_problems={n}: {e}") from None
    kept, dropped = [], []
    for p in problems:
        kind = "prime" if p["answer"] == "prime" else "arith"
        found = extract_answer(p["solution"])
        status = verify(p)
        if status == "ok":
            kept.append({"question": p["question"], "kind": kind, "text": dialogue(p["question"], p["solution"]),
                         "seed_id": f"{STEP}:{p['id']}", "meta": {"answer": p["answer"], "extracted": found}})
        else:
            dropped.append({"seed_id": f"{STEP}:{p['id']}", "question": p["question"], "solution": p["solution"],
                            "answer": p["answer"], "extracted": found, "status": status})
    heldout = heldout_questions(cfg)
    check_decontaminated(kept, heldout)
    if len(kept) + len(dropped) != len(problems):  # the report's funnel must add up, whatever changes above
        raise AssertionError(f"synthesize: {STEP}: {len(problems)} generated != {len(kept)} kept + "
                             f"{len(dropped)} rejected")
    docs = [{"text": d["text"], "seed_id": d["seed_id"], "step": STEP, "kind": d["kind"], "template_id": "",
             "seed_source": "arith", "meta": json.dumps(d["meta"])} for d in kept]
    by_kind = {k: {"generated": sum(1 for p in problems if ("prime" if p["answer"] == "prime" else "arith") == k),
                   "kept": sum(1 for d in kept if d["kind"] == k)} for k in ("arith", "prime")}
    report = {"generated": len(problems), "kept": len(kept), "rejected": len(dropped),
              "dropped": dict(sorted(Counter(r["status"] for r in dropped).items())), "by_kind": by_kind,
              "heldout_checked": len(heldout),
              "examples": [d["text"] for d in docs[:2]] + [f"{r['question']} -> {r['solution']}" for r in dropped[:1]]}
    return ToySource(docs, dropped, report)
