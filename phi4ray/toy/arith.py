"""A toy verifiable domain for the tiny preset: chained single-digit arithmetic with known
answers, and "name a prime" questions answered by a noisy teacher.

Why two kinds. Pivotal Token Search needs queries on which the policy succeeds sometimes
(0.2 <= p <= 0.8) and an oracle that checks its answers. Arithmetic needs the model to read the
question (copy operands, combine them), which the 4-layer tiny model does not learn in the
minutes the tiny pipeline gives SFT (docs/benchmarks.md, "Tiny-run results"); in-context use takes millions of
tokens, not the tiny run's 150k. So arithmetic
is kept as the real task and PTS's filter drops it as too hard, while "name a prime below 100"
needs no reading at all: the SFT teacher picks a prime only `teacher_accuracy` of the time, the
policy learns that distribution (p ~ 0.5), the number it writes is the pivotal token, and DPO on
PTS pairs can push the policy past its teacher, measurably on held-out questions.

Solutions are written the way the math oracle reads them: steps, then `\\boxed{answer}`; a prime
question's reference answer is the word "prime" (check_answer tests primality).
"""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from phi4ray.run.errors import ConfigError
from phi4ray.verify.oracles import MathOracle, extract_answer


@dataclass(frozen=True)
class ArithConfig:
    n_terms: int = 3          # operands per question
    max_operand: int = 9      # operands are 1..max_operand
    ops: str = "+-"
    prime_share: float = 0.5  # share of "name a prime" questions
    teacher_accuracy: float = 0.5  # how often the SFT teacher's number is really prime

    def __post_init__(self) -> None:
        if not 0 <= self.prime_share <= 1 or not 0 <= self.teacher_accuracy <= 1:
            raise ConfigError(f"arith.prime_share={self.prime_share} and arith.teacher_accuracy="
                              f"{self.teacher_accuracy} must be in [0, 1]")
        if self.n_terms < 2 or self.max_operand < 1 or not self.ops or set(self.ops) - set("+-*"):
            raise ConfigError(f"arith: need n_terms >= 2, max_operand >= 1 and ops from '+-*' (got {self})")


PRIME_TEMPLATES = {  # disjoint wordings: held-out questions are worded differently
    "train": ["Name a prime number below 100.", "Give me a prime under 100.", "Pick any prime less than 100.",
              "Tell me one prime number smaller than 100.", "Which number below 100 is prime? Name one."],
    "test": ["Write down a prime below one hundred.", "Choose a prime number that is less than 100."],
}
PRIMES = {n for n in range(2, 100) if all(n % d for d in range(2, int(n ** 0.5) + 1))}


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
    """n problems: round(n * prime_share) prime questions, the rest distinct arithmetic ones,
    interleaved deterministically. Held-out ("test") questions never appear in "train"."""
    n_prime = round(n * cfg.prime_share)
    arith = make_arithmetic(n - n_prime, seed, cfg, split)
    primes = make_prime_questions(n_prime, seed, cfg, split)
    out = [p for pair in zip(arith, primes) for p in pair] + arith[len(primes):] + primes[len(arith):]
    return out


def make_prime_questions(n: int, seed: int, cfg: ArithConfig, split: str) -> list[dict]:
    rng = random.Random(f"{seed}:{split}:prime")
    primes, others = sorted(PRIMES), [k for k in range(2, 100) if k not in PRIMES]
    out = []
    for i in range(n):
        q = rng.choice(PRIME_TEMPLATES[split])
        k = rng.choice(primes if rng.random() < cfg.teacher_accuracy else others)
        out.append({"id": f"prime-{split}-{i:05d}", "question": q, "answer": "prime",
                    "solution": f"The answer is \\boxed{{{k}}}."})
    return out


def check_answer(text: str, reference: str) -> bool:
    """The domain's oracle: primality for prime questions, the math oracle otherwise."""
    if reference == "prime":
        a = extract_answer(text)
        return a is not None and a.strip().isdigit() and int(a) in PRIMES
    return MathOracle()(text, reference)


def make_arithmetic(n: int, seed: int, cfg: ArithConfig = ArithConfig(), split: str = "train") -> list[dict]:
    """n distinct arithmetic problems. Held-out splits never share a question with "train" (same
    generator, disjoint by construction: the question text decides the split by a stable hash)."""
    rng = random.Random(f"{seed}:{split}")
    out, seen = [], set()
    # the space is finite (9^3 * 2^2 = 2916 for the defaults): give up rather than loop forever
    for _ in range(n * 50):
        if len(out) == n:
            break
        nums, ops = _problem(rng, cfg)
        q = question_text(nums, ops)
        if q in seen or split_of(q) != split:
            continue
        seen.add(q)
        sol, ans = worked_solution(nums, ops)
        out.append({"id": f"arith-{split}-{len(out):05d}", "question": q, "solution": sol, "answer": str(ans)})
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct {split} problems exist for {cfg}; asked for {n}")
    return out


def split_of(question: str) -> str:
    """An arithmetic question's split: 80% "train", 20% "test" (held out), decided by the text so
    that any seed and any generator (SFT data, synthetic data, eval suites) keeps the sets disjoint."""
    return "train" if zlib.crc32(question.encode()) % 5 else "test"


def sft_conversation(problem: dict) -> list[dict]:
    return [{"role": "user", "content": problem["question"]},
            {"role": "assistant", "content": problem["solution"]}]
