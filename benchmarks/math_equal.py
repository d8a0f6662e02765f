r"""Math answer equivalence: our hand-written judge (`phi4ray.verify.oracles`, its own parser in
`phi4ray.verify.mathexpr`) against HF's math-verify (`math_verify.parse` + `verify`), on the same pairs.

    .venv/bin/python benchmarks/math_equal.py [--n 200] [--seed 0] [--show 40] [--hang-limit 10]

Cases, each (pred, gold, expected label, category):
- the oracle test cases: every `test_math_equal_true` / `test_math_equal_false` pair of
  tests/test_oracles.py in both directions (read from the test module, so they stay in sync),
  and the completions of `test_math_oracle`;
- `--n` generated ones (seeded): equal spellings (fraction vs decimal, 1/2 vs 0.5 vs \frac{1}{2}
  vs \dfrac12, rounded decimals of non-terminating values, percentages, integers with commas,
  roots, scientific notation and powers, mixed numbers, "x =" prefixes, units and degrees, simple
  polynomial identities, tuples, intervals, sets in any order, \text answers), unequal near misses
  (one digit off, a decimal too coarse, a root or an exponent off, a bracket of an interval, a
  tuple reversed, an element missing, \pi vs 3.14), answers outside our parser's grammar (its
  "not handled" list: \log_b, \binom, factorials, |x|, trig values, inequalities vs intervals,
  "x = a or x = b", matrices, Greek letters) where a full LaTeX parser may win, and whole
  completions with a \boxed{} answer.

Three judges. "ours" is our grammar alone, as main had it: `math_equal(pred, gold, library=False)`
for an answer, our `extract_answer` then that for a completion. "ours + math-verify" is what
`math_equal` / `MathOracle` now do: ours decides what its grammar reads, math-verify (in its
helper process, see phi4ray.verify.mathexpr) judges answers written outside it. math-verify alone is
`verify(parse(gold), parse(pred))`, gold first as its docs ask. A bare answer such as "(1,2)" or "x^2-1" is not LaTeX math to its
extractor until it is delimited, so answers are measured three ways: as written ("raw"), wrapped
in $..$ ("$"), and wrapped in \boxed{} ("boxed"); completions go to parse as written. The
agreement table runs math-verify in the main thread with its default 5 s signal timeouts; the
per-call times (median and mean over all cases) are of a second pass, after one warm-up pass
(sympy imported on both sides, math-verify's helper process started).

Then two checks of how each side runs where the oracles run (Ray actors with max_concurrency > 1
and thread pools, i.e. outside the main thread): math-verify's default timeouts there (signal.alarm
raises outside the main thread), and pathological answers (power towers, deep nesting, 100k
digits, (10^8)!) with its timeouts off, each in a child process killed after `--hang-limit`
seconds, against ours and ours + math-verify.
"""
from __future__ import annotations

import argparse
import logging
import math
import multiprocessing as mp
import random
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is read for its cases

from math_verify import parse, verify  # noqa: E402

from phi4ray.verify.oracles import MathOracle, extract_answer, last_boxed, math_equal  # noqa: E402
from tests import test_oracles  # noqa: E402

logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" warnings, once per process
WRAPS = {"raw": lambda s: s, "$": lambda s: f"${s}$", "boxed": lambda s: f"\\boxed{{{s}}}"}


# --- cases ------------------------------------------------------------------------------------
def _marked(fn) -> list[tuple]:
    return list(next(m for m in fn.pytestmark if m.name == "parametrize").args[1])


def test_cases() -> list[tuple]:
    """(pred, gold, expected, category, level) from tests/test_oracles.py, both directions."""
    out = []
    for fn, label in ((test_oracles.test_math_equal_true, True), (test_oracles.test_math_equal_false, False)):
        for a, b in _marked(fn):
            out += [(a, b, label, "tests", "answer"), (b, a, label, "tests", "answer")]
    out += [(r"... so we get \boxed{\dfrac{41}{2}}.", "20.5", True, "tests", "completion"),
            ("Adding up, 40 + 42 = 82.\n#### 82", "82", True, "tests", "completion"),
            ("The answer is $x = 3$.", r"\boxed{3}", True, "tests", "completion"),
            ("the answer is 81", "82", False, "tests", "completion")]
    return out


def _frac(f: Fraction, style: str) -> str:
    sign, n, d = "-" if f < 0 else "", abs(f.numerator), f.denominator
    short = rf"{sign}\frac{n}{d}" if n < 10 and d < 10 else rf"{sign}\frac{{{n}}}{{{d}}}"
    return {"frac": rf"{sign}\frac{{{n}}}{{{d}}}", "dfrac": rf"{sign}\dfrac{{{n}}}{{{d}}}", "slash": f"{sign}{n}/{d}",
            "short": short}[style]


def _dec(f: Fraction) -> str:
    return format(f.numerator / f.denominator, "f").rstrip("0").rstrip(".") if f.denominator > 1 else str(f.numerator)


def _commas(n: int) -> str:
    return f"{n:,}"


def _gen_one(kind: str, r: random.Random) -> tuple[str, str, bool]:
    """One (pred, gold, expected) of a category."""
    if kind == "frac_vs_decimal":
        f = Fraction(r.randint(1, 99), r.choice([2, 4, 5, 8, 10, 16, 20, 25, 40])) * r.choice([1, 1, -1])
        return _dec(f), _frac(f, r.choice(["frac", "dfrac", "slash", "short"])), True
    if kind == "frac_spellings":
        f = Fraction(r.randint(1, 30), r.randint(2, 30)) * r.choice([1, -1])
        a, b = r.sample(["frac", "dfrac", "slash", "short"], 2)
        return _frac(f, a), _frac(f, b), True
    if kind == "rounded_decimal":  # a non-terminating value, to six decimal places
        f = Fraction(r.randint(1, 50), r.choice([3, 6, 7, 9, 11, 12, 13]))
        if f.denominator in (1, 2, 4, 5):
            f += Fraction(1, 3)
        return f"{float(f):.6f}", _frac(f, "frac"), True
    if kind == "percent":
        p = r.randint(1, 99)
        return r.choice([(f"{p}\\%", _dec(Fraction(p, 100))), (f"{p}%", _dec(Fraction(p, 100))),
                         (f"{p}\\%", str(p))]) + (True,)
    if kind == "commas":
        n = r.randint(1000, 10**9)
        return (_commas(n), str(n), True) if r.random() < 0.5 else (str(n), _commas(n), True)
    if kind == "sqrt":
        k, m = r.randint(2, 6), r.choice([2, 3, 5, 6, 7])
        return r.choice([(rf"{k}\sqrt{{{m}}}", rf"\sqrt{{{k * k * m}}}"),
                         (rf"\frac{{1}}{{\sqrt{{{m}}}}}", rf"\frac{{\sqrt{{{m}}}}}{{{m}}}"),
                         (rf"\sqrt{{{k * k}}}", str(k))]) + (True,)
    if kind == "sci_and_powers":
        a, k = r.randint(1, 9), r.randint(2, 6)
        return r.choice([(rf"{a}\times10^{{{k}}}", str(a * 10**k)), (f"2^{{{k + 4}}}", str(2 ** (k + 4))),
                         (f"{a}e{k}", str(a * 10**k))]) + (True,)
    if kind == "mixed_number":
        w, d = r.randint(1, 9), r.choice([2, 4, 5, 8])
        n = r.randint(1, d - 1)
        return rf"{w}\frac{{{n}}}{{{d}}}", _dec(w + Fraction(n, d)), True
    if kind == "dressing":
        v = r.randint(1, 500)
        return r.choice([(f"x = {v}", str(v)), (f"{v}^\\circ", str(v)), (f"\\${v}.00", str(v)),
                         (f"\\text{{{v} cm}}", str(v)), (f"{v}\\text{{ meters}}", str(v))]) + (True,)
    if kind == "expression":
        a, b = r.randint(1, 9), r.randint(1, 9)
        return r.choice([(f"(x+{a})(x+{b})", f"x^2+{a + b}x+{a * b}"), (f"{a}(x+{b})", f"{a}x+{a * b}"),
                         (rf"\frac{{x}}{{{a + 1}}}", rf"\frac{{1}}{{{a + 1}}}x"),
                         (f"(x-{a})^2", f"x^2-{2 * a}x+{a * a}")]) + (True,)
    if kind == "tuple":
        a, b = Fraction(r.randint(1, 9), 2), r.randint(-9, 9)
        return rf"\left({_frac(a, 'frac')}, {b}\right)", f"({_dec(a)},{b})", True
    if kind == "interval":
        a, b = sorted(r.sample(range(-20, 20), 2))
        lo, hi = r.choice("(["), r.choice(")]")
        if r.random() < 0.3:
            return rf"\left{lo}{a}, \infty\right)", f"{lo}{a},\\infty)", True
        return rf"\left{lo} {a}, {b} \right{hi}", f"{lo}{a},{b}{hi}", True
    if kind == "set_order":
        xs = r.sample(range(-9, 20), 3)
        ys = r.sample(xs, 3)
        return r.choice([(rf"\{{{', '.join(map(str, xs))}\}}", rf"\{{{','.join(map(str, ys))}\}}"),
                         (", ".join(map(str, xs)), ", ".join(map(str, ys)))]) + (True,)
    if kind == "text_answer":
        w = r.choice(["yes", "no", "odd", "even", "Monday", "north"])
        return r.choice([(w.capitalize(), rf"\text{{{w}}}"), (rf"\textbf{{{w}}}", w)]) + (True,)
    # beyond our parser's grammar (its docstring's "not handled"): where a full LaTeX parser may win
    if kind == "log_binom_factorial":
        k = r.randint(2, 6)
        return r.choice([(rf"\log_2 {2 ** k}", str(k)), (rf"\log_{{3}}{{{3 ** k}}}", str(k)),
                         (rf"\binom{{{k + 3}}}{{2}}", str((k + 3) * (k + 2) // 2)), (f"{k}!", str(math.factorial(k))),
                         (f"|-{k}|", str(k))]) + (True,)
    if kind == "trig_values":
        return r.choice([(r"\sin\frac{\pi}{6}", r"\frac{1}{2}"), (r"\cos\frac{\pi}{3}", "0.5"), (r"\tan\frac{\pi}{4}", "1"),
                         (r"\sin\frac{\pi}{3}", r"\frac{\sqrt{3}}{2}"), (r"\cos 0", "1")]) + (True,)
    if kind == "inequality":
        a = r.randint(-9, 9)
        return r.choice([(rf"x \geq {a}", rf"[{a}, \infty)"), (f"x > {a}", rf"({a}, \infty)"), (f"x < {a}", rf"(-\infty, {a})"),
                         (rf"{a} \le x \le {a + 3}", f"[{a},{a + 3}]")]) + (True,)
    if kind == "or_list":
        a, b = r.sample(range(-9, 10), 2)
        return r.choice([(rf"x = {a} \text{{ or }} x = {b}", f"{b}, {a}"), (f"x={a}, x={b}", rf"\{{{b}, {a}\}}")]) + (True,)
    if kind == "matrix":
        a, b = r.randint(1, 9), Fraction(r.randint(1, 9), 2)
        return (rf"\begin{{pmatrix}} {a} \\ {_dec(b)} \end{{pmatrix}}",
                rf"\begin{{pmatrix}}{a}\\{_frac(b, 'frac')}\end{{pmatrix}}", True)
    if kind == "greek":
        a = r.randint(2, 9)
        return r.choice([(rf"\frac{{\alpha}}{{{a}}}", rf"\frac{{1}}{{{a}}}\alpha"),
                         (rf"{a}\theta", rf"\theta \cdot {a}")]) + (True,)
    if kind == "near_beyond":
        k = r.randint(2, 6)
        return r.choice([(rf"\binom{{{k + 3}}}{{2}}", str((k + 3) * (k + 2) // 2 + 1)), (f"x > {k}", rf"[{k}, \infty)"),
                         (rf"\log_2 {2 ** k}", str(k + 1)), (r"\sin\frac{\pi}{6}", r"\frac{\sqrt{3}}{2}"),
                         (rf"\begin{{pmatrix}} {k} \\ 1 \end{{pmatrix}}",
                          rf"\begin{{pmatrix}} 1 \\ {k} \end{{pmatrix}}")]) + (False,)
    # near misses
    if kind == "near_digit":
        n = r.randint(2, 5000)
        return r.choice([(str(n), str(n + r.choice([-1, 1]))), (_commas(n * 1000), str(n * 100)),
                         ("0.5", "0.05"), (_dec(Fraction(n, 4)), _frac(Fraction(n + 1, 4), "frac"))]) + (False,)
    if kind == "near_coarse":
        f = Fraction(r.randint(1, 20), r.choice([3, 7, 9, 11]))
        if f.denominator == 1:
            f += Fraction(1, 3)
        return f"{float(f):.2f}", _frac(f, "frac"), False
    if kind == "near_sqrt":
        m = r.choice([2, 3, 5, 6, 7])
        return r.choice([(rf"\sqrt{{{m}}}", rf"\sqrt{{{m + 1}}}"), (r"2\sqrt{3}", r"3\sqrt{2}"),
                         (rf"\sqrt{{{m}}}", f"{m ** 0.5:.2f}")]) + (False,)
    if kind == "near_expr":
        a = r.randint(1, 9)
        return r.choice([(f"x^2-{a * a}", f"x^2+{a * a}"), (f"(x-{a})^2", f"x^2-{a * a}"), (f"{a}x", str(a)),
                         (f"2^{{{a + 2}}}", str(2 ** (a + 2) + 1))]) + (False,)
    if kind == "near_interval":
        a, b = sorted(r.sample(range(-20, 20), 2))
        return r.choice([(f"[{a},{b})", f"[{a},{b}]"), (f"({a},{b}]", f"[{a},{b}]"), (f"({a},{b})", f"({b},{a})")]) + (False,)
    if kind == "near_set":
        xs = r.sample(range(-9, 20), 3)
        return rf"\{{{', '.join(map(str, xs[:2]))}\}}", rf"\{{{', '.join(map(str, xs))}\}}", False
    if kind == "near_percent":
        p = r.randint(2, 99)
        return f"{p}\\%", _dec(Fraction(p, 10)), False
    if kind == "near_pi":
        return r.choice([(r"\pi", "3.14"), (r"2\pi", "6.28"), (r"\frac{\pi}{2}", "1.57")]) + (False,)
    raise ValueError(kind)


_ANSWER_KINDS = ["frac_vs_decimal", "frac_spellings", "rounded_decimal", "percent", "commas", "sqrt", "sci_and_powers",
                 "mixed_number", "dressing", "expression", "tuple", "interval", "set_order", "text_answer",
                 "log_binom_factorial", "trig_values", "inequality", "or_list", "matrix", "greek", "near_beyond",
                 "near_digit", "near_coarse", "near_sqrt", "near_expr", "near_interval", "near_set", "near_percent",
                 "near_pi"]
_LEADS = ["Let me work through this carefully.\n\nAfter simplifying, we find the result.\n\n",
          "First we set up the equation, then solve it step by step. ", "We compute 3 + 4 = 7 on the way. "]
_ENDS = ["Therefore, the final answer is $\\boxed{{{a}}}$.", "So the answer is \\boxed{{{a}}}.",
         "Final Answer: The final answer is $\\boxed{{{a}}}$. I hope it is correct."]


def generated(n: int, seed: int) -> list[tuple]:
    """`n` cases: 85% answer pairs cycling through the categories, the rest whole completions that
    box an answer of a random category (so their label is that answer's)."""
    r = random.Random(seed)
    out = []
    n_completion = n * 15 // 100
    for i in range(n - n_completion):
        kind = _ANSWER_KINDS[i % len(_ANSWER_KINDS)]
        pred, gold, label = _gen_one(kind, r)
        out.append((pred, gold, label, kind, "answer"))
    for _ in range(n_completion):
        kind = r.choice(_ANSWER_KINDS)
        pred, gold, label = _gen_one(kind, r)
        text = r.choice(_LEADS) + r.choice(_ENDS).format(a=pred)
        out.append((text, gold, label, "boxed_completion", "completion"))
    return out


# --- the judges -------------------------------------------------------------------------------
def ours(pred, gold, level: str, library: bool = False) -> bool:
    """Our judge: grammar only (`library=False`, what main had), or as shipped (math-verify past it)."""
    if level == "completion":
        if library:
            return MathOracle()(pred, gold)
        return math_equal(extract_answer(pred), last_boxed(gold) or gold, library=False)
    return math_equal(pred, gold, library=library)


def theirs(pred, gold, level: str, wrap: str, timeout: int | None = 5) -> bool:
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    w = WRAPS[wrap]
    try:
        g = parse(w(gold), parsing_timeout=timeout)
        p = parse(pred if level == "completion" else w(pred), parsing_timeout=timeout)
        return bool(verify(g, p, timeout_seconds=timeout))
    except Exception:  # a judge that raises counts as "not equal", as ours never raises
        return False


def _timed(fn, cases) -> tuple[list[bool], float, float]:
    """Verdicts, median and mean seconds per call (second pass; the first warms caches and imports)."""
    for c in cases:
        fn(c)
    verdicts, times = [], []
    for c in cases:
        t = time.perf_counter()
        verdicts.append(fn(c))
        times.append(time.perf_counter() - t)
    return verdicts, statistics.median(times), statistics.mean(times)


# --- where the oracles run --------------------------------------------------------------------
PATHOLOGICAL = [r"9^{9^{9}}", r"2^{2^{2^{2^{2}}}}", r"10^{10^{10}}", "1" * 100_000, "x^" * 300 + "2",
                r"\frac{1}{" * 200, "(" * 5000 + "1,2" + ")" * 5000, r"(x+1)^{200}", r"(10^{8})!", r"\binom{10^{9}}{10^{8}}"]


def _child(judge: str, text: str, q) -> None:
    t = time.perf_counter()
    if judge == "ours":
        ours(text, "1", "answer")
    else:
        theirs(text, "1", "answer", "$", timeout=None)
    q.put(time.perf_counter() - t)


def pathological(limit: float) -> dict[str, list[float | None]]:
    """Seconds per pathological answer (None: killed at `limit`), each in a fresh forked process."""
    ctx = mp.get_context("fork")
    out = defaultdict(list)
    for judge in ("ours", "math-verify"):
        for text in PATHOLOGICAL:
            q = ctx.Queue()
            p = ctx.Process(target=_child, args=(judge, text, q))
            p.start()
            p.join(limit)
            if p.is_alive():
                p.kill()
                p.join()
                out[judge].append(None)
            else:
                out[judge].append(q.get() if not q.empty() else None)
    return out


def in_thread() -> str:
    box: dict = {}

    def run():
        try:
            box["default"] = theirs("0.5", "1/2", "answer", "$", timeout=5) and "ok"
            parse("$0.5$")  # theirs() swallows errors; this shows the one math-verify raises
        except Exception as e:
            box["default"] = f"{type(e).__name__}: {str(e)[:90]}..."
        box["none"] = theirs("0.5", "1/2", "answer", "$", timeout=None)
    t = threading.Thread(target=run)
    t.start()
    t.join()
    return f"default timeouts: {box['default']} | timeouts=None: verdict {box['none']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="generated cases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=60, help="disagreements listed at most")
    ap.add_argument("--hang-limit", type=float, default=10.0, help="seconds before a pathological case is killed")
    args = ap.parse_args()

    suites = {"tests": test_cases(), "generated": generated(args.n, args.seed)}
    judges = {"ours": lambda c: ours(c[0], c[1], c[4])}
    judges.update({f"math-verify {w}": (lambda c, w=w: theirs(c[0], c[1], c[4], w)) for w in WRAPS})
    judges["ours + math-verify"] = lambda c: ours(c[0], c[1], c[4], library=True)
    print(f"cases: {len(suites['tests'])} from tests/test_oracles.py, {len(suites['generated'])} generated "
          f"(seed {args.seed}); math-verify gets answers raw, in $..$, or in \\boxed{{}}; completions as written\n")
    verdicts: dict[tuple[str, str], list[bool]] = {}
    print(f"{'judge':20s} {'suite':10s} {'agree':>12s} {'%':>6s} {'false +':>8s} {'false -':>8s} "
          f"{'median/call':>12s} {'mean/call':>10s}")
    for suite, cases in suites.items():
        for name, fn in judges.items():
            v, per_call, mean = _timed(fn, cases)
            verdicts[name, suite] = v
            agree = sum(x == c[2] for x, c in zip(v, cases))
            fp = sum(x and not c[2] for x, c in zip(v, cases))
            fn_ = sum(not x and c[2] for x, c in zip(v, cases))
            print(f"{name:20s} {suite:10s} {agree:5d}/{len(cases):<6d} {100 * agree / len(cases):6.1f} "
                  f"{fp:8d} {fn_:8d} {per_call * 1e3:10.3f}ms {mean * 1e3:8.3f}ms")

    best = max((n for n in judges if n.startswith("math-verify")),
               key=lambda n: sum(sum(x == c[2] for x, c in zip(verdicts[n, s], cs)) for s, cs in suites.items()))
    shipped = "ours + math-verify"
    print(f"\nper category, agreement with the label (ours | {best} | {shipped}):")
    for suite, cases in suites.items():
        tally: dict[str, Counter] = defaultdict(Counter)
        for c, a, b, h in zip(cases, verdicts["ours", suite], verdicts[best, suite], verdicts[shipped, suite]):
            key = c[3] if suite == "generated" else f"tests ({'equal' if c[2] else 'unequal'}, {c[4]})"
            tally[key].update(n=1, ours=a == c[2], theirs=b == c[2], shipped=h == c[2])
        for key, t in tally.items():
            print(f"  {key:36s} {t['ours']:3d}/{t['n']:<3d} | {t['theirs']:3d}/{t['n']:<3d} | {t['shipped']:3d}/{t['n']:<3d}")

    print(f"\ndisagreements with the label (ours | {best} | {shipped}: 'x' wrong, '.' right), up to {args.show}:")
    shown = 0
    for suite, cases in suites.items():
        for c, a, b, h in zip(cases, verdicts["ours", suite], verdicts[best, suite], verdicts[shipped, suite]):
            if c[2] in (a, b, h) and c[2] == a == b == h or shown >= args.show:
                continue
            shown += 1
            marks = " ".join("." if v == c[2] else "x" for v in (a, b, h))
            pred = repr(c[0])[-70:] if isinstance(c[0], str) else repr(c[0])
            print(f"  [{marks}] {c[3]:19s} pred={pred} gold={c[1]!r} expected={c[2]}")

    print("\noutside the main thread (Ray actors with max_concurrency > 1, thread pools):", in_thread())
    print(f"\npathological answers vs '1' (seconds): ours and math-verify with its timeouts off (as it must run in a "
          f"thread), each in a child killed after {args.hang_limit:.0f}s (KILLED = hung); ours + math-verify in this "
          "process (helper deadline, helper restarts included)")
    times = pathological(args.hang_limit)
    ours(r"\binom{4}{2}", "6", "answer", library=True)  # the helper's start is not a pathological answer's cost
    for i, text in enumerate(PATHOLOGICAL):
        cells = ["KILLED" if times[j][i] is None else f"{times[j][i]:.3f}" for j in ("ours", "math-verify")]
        t = time.perf_counter()
        verdict = ours(text, "1", "answer", library=True)
        cells.append(f"{time.perf_counter() - t:.3f}{'' if verdict is False else ' (equal?!)'}")
        print(f"  {repr(text[:26]):30s} ours {cells[0]:>8s}   math-verify {cells[1]:>8s}   ours + math-verify {cells[2]:>8s}")


if __name__ == "__main__":
    main()
