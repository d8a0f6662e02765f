r"""The toy domain's held-out questions as built-in suites (`toy_prime`, `toy_arith`) and their kind.

The tiny preset trains on the toy domain (phi4ray.toy.arith): SFT conversations, PTS queries and the
verified synthetic pretraining source (phi4ray.toy.synth) all come from its "train" split. These
suites are its held-out questions, so the tiny report shows what each stage did on the task it
trained, where the benchmark-like suites (arith word problems, choice, code, ifeval) stay at 0 for
a model of a few million parameters trained for minutes:
- `toy_prime`: "name a prime below 100" in the held-out wordings (`PRIME_TEMPLATES["test"]`);
  the SFT teacher is right half the time and DPO on PTS pairs moves the policy past it;
- `toy_arith`: chained single-digit arithmetic from the held-out split (`arith.split_of`), every
  such question once, in a seeded order.

Items are of kind `toy`. The user message is the bare question, exactly what SFT trains on
(`arith.sft_conversation`): no answer instruction is appended, since the format (steps, then
`\boxed{n}`) is what SFT taught and a line the model never saw only moves it off that
distribution. The grade is the domain's oracle (`arith.check_answer`): primality when the
reference is "prime", MathOracle otherwise.

"Name a prime" has two held-out wordings, so at temperature 0 the suite asks two questions many
times; it measures p(success) when sampled (the tiny preset evaluates at temperature 1, and the
runner seeds each item apart, so repeated prompts are independent draws).

Both use the default domain (`ArithConfig()`), the one every preset trains unless `arith.*` is
overridden: the suites depend on `eval.seed` and size only, like every built-in suite.
"""
from __future__ import annotations

import itertools
import random

from phi4ray.evals.kinds import Item, MathKind, register_kind
from phi4ray.evals.schema import EvalItem, Suite
from phi4ray.toy.arith import ArithConfig, check_answer, make_prime_questions, question_text, split_of, worked_solution

TOY_SUITES = ("toy_prime", "toy_arith")
VERSION = "1"  # bump when an item changes: part of the suites' versions (graded records are keyed on it)


class ToyKind(MathKind):
    """A toy-domain question: the bare question as the user message (no instruction), the final
    answer graded by the domain's oracle, `check_answer`, instead of MathOracle alone."""
    name = "toy"

    def instruction(self, item: Item) -> str:
        return ""

    def check(self, response: str, reference: str) -> bool:
        return check_answer(response, reference)


TOY_KIND = register_kind(ToyKind())


def heldout_arithmetic(cfg: ArithConfig = ArithConfig()) -> list[dict]:
    """Every arithmetic question of the domain in the held-out split, sorted by question."""
    out = []
    for nums in itertools.product(range(1, cfg.max_operand + 1), repeat=cfg.n_terms):
        for ops in itertools.product(cfg.ops, repeat=cfg.n_terms - 1):
            q = question_text(list(nums), list(ops))
            if split_of(q) == "test":
                out.append({"question": q, "answer": str(worked_solution(list(nums), list(ops))[1])})
    return sorted(out, key=lambda p: p["question"])


def toy_arith_suite(seed: int = 0, size: int = 48) -> Suite:
    """`size` held-out arithmetic questions, at most all of them (about 580 for the default
    domain): a seeded permutation of the whole held-out set, so every prefix is a smaller suite."""
    pool = heldout_arithmetic()
    random.Random(f"toy_arith:{seed}").shuffle(pool)
    items = tuple(EvalItem(f"toy-arith-{i:03d}", "toy", p["question"], p["answer"])
                  for i, p in enumerate(pool[:size]))
    return Suite("toy_arith", f"{VERSION}-seed{seed}-n{len(items)}", items)


def toy_prime_suite(seed: int = 0, size: int = 48) -> Suite:
    """`size` "name a prime" questions in the held-out wordings (the generator's own "test" split)."""
    qs = make_prime_questions(size, seed, ArithConfig(), "test")
    items = tuple(EvalItem(f"toy-prime-{i:03d}", "toy", p["question"], p["answer"]) for i, p in enumerate(qs))
    return Suite("toy_prime", f"{VERSION}-seed{seed}-n{size}", items)
