r"""Evaluation suites: the item schema, JSONL files, prompt rendering and the built-in suites.

Phi-4 is judged on MMLU, GPQA, MATH, MGSM, HumanEval and IFEval. Hubs are closed here, so the
project ships small suites of the same kinds whose answers are checkable by code, generated
deterministically from a seed (no download) or hand-written (`data/code_tasks.jsonl`):
- `arith`: multi-step arithmetic and fraction word problems with exact answers, a quarter of them
  in German, French or Spanish (MATH / MGSM-like; the model must end with \boxed{answer});
- `choice`: four-option questions whose answer is computable (unit conversions, products,
  primality, gcd, remainders, fraction order, syllogisms), correct letters balanced over A-D
  (MMLU / GPQA-like);
- `code`: small functions with docstring prompts and hidden tests (HumanEval-like);
- `ifeval`: writing tasks with programmatic instructions (see `ifeval.py`).

One JSONL line per item, `EvalItem.to_json()` plus the suite's `suite` and `version` (repeated on
each line, so every line stands alone). A user adds a suite by writing such a file; every line is
validated on load and a bad one raises `SuiteError` naming file:line and the field.
`write_builtin_suites` writes the built-in suites as exactly the text the model is shown:
curation's decontamination step reads these files to keep them out of the training data.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from phi4ray.config import ConfigError
from phi4ray.evals import ifeval

KINDS = ("math", "choice", "code", "ifeval")
GENERATOR_VERSION = "1"  # bump when a generator's output changes: it is part of every suite version
DATA_DIR = Path(__file__).with_name("data")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # a suite name is also a file name
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_FIELDS = ("id", "kind", "prompt", "reference", "tests", "checks", "choices", "meta")


class SuiteError(ConfigError):
    """A suite or item that cannot be evaluated; the message names the file:line and field."""


@dataclass(frozen=True)
class EvalItem:
    id: str
    kind: str  # one of KINDS
    # the user message without the per-kind answer instruction (see render_prompt); a choice
    # item's prompt holds the question *and* its lettered options, as the model is to read them
    prompt: str
    reference: str = ""  # math: the answer; choice: the correct letter; code / ifeval: ""
    tests: str = ""  # code: Python run after the completion's code; exit status 0 passes
    checks: tuple[dict, ...] = ()  # ifeval: {"type": ..., params} specs, see ifeval.CHECKS
    choices: tuple[str, ...] = ()  # choice (optional): the options' texts, in letter order
    meta: dict = field(default_factory=dict)  # free-form, JSON-able (generator values, sources)

    def __post_init__(self) -> None:
        # lists from JSON become tuples: an item is a value and must not change under the runner
        object.__setattr__(self, "checks", tuple(self.checks) if isinstance(self.checks, list) else self.checks)
        object.__setattr__(self, "choices", tuple(self.choices) if isinstance(self.choices, list) else self.choices)
        problem = self._problem()
        if problem:
            raise SuiteError(problem)

    def _problem(self) -> str | None:
        if not isinstance(self.id, str) or not self.id.strip() or len(self.id) > 200 or "\n" in self.id:
            return f"id={self.id!r} must be a non-empty one-line string of at most 200 characters"
        if self.kind not in KINDS:
            return f"kind={self.kind!r} must be one of {KINDS}"
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            return f"prompt must be a non-empty string (item {self.id!r})"
        for name in ("reference", "tests"):
            if not isinstance(getattr(self, name), str):
                return f"{name} must be a string, got {type(getattr(self, name)).__name__} (item {self.id!r})"
        if not isinstance(self.checks, tuple) or not isinstance(self.choices, tuple):
            return f"checks and choices must be lists (item {self.id!r})"
        if not isinstance(self.meta, dict):
            return f"meta must be an object, got {type(self.meta).__name__} (item {self.id!r})"
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as e:
            return f"meta is not JSON-serializable: {e} (item {self.id!r})"
        return self._kind_problem()

    def _kind_problem(self) -> str | None:
        k, where = self.kind, f"(item {self.id!r}, kind {self.kind!r})"
        needs = {"math": "reference", "code": "tests", "ifeval": "checks"}
        for kind, name in needs.items():
            if k == kind and not (getattr(self, name).strip() if name != "checks" else self.checks):
                return f"{name} must not be empty {where}"
        if k in ("code", "ifeval") and self.reference:
            return f"reference must be empty {where}: the verdict comes from the {needs[k]}"
        if k != "code" and self.tests:
            return f"tests are only for code items {where}"
        if k != "ifeval" and self.checks:
            return f"checks are only for ifeval items {where}"
        if k != "choice" and self.choices:
            return f"choices are only for choice items {where}"
        if k == "choice":
            if self.choices and not (2 <= len(self.choices) <= 26 and all(isinstance(c, str) and c.strip()
                                                                           for c in self.choices)):
                return f"choices must be 2 to 26 non-empty strings {where}"
            if self.reference not in tuple(self.letters):
                return f"reference={self.reference!r} must be one letter of {self.letters!r} {where}"
        for i, spec in enumerate(self.checks):
            try:
                ifeval.validate_check(spec)
            except ifeval.CheckError as e:
                return f"checks[{i}]: {e} {where}"
        return None

    @property
    def letters(self) -> str:
        """The answer letters of a choice item: one per choice, A-D when no choices are given."""
        return _LETTERS[:len(self.choices)] if self.choices else "ABCD"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "prompt": self.prompt, "reference": self.reference,
                "tests": self.tests, "checks": list(self.checks), "choices": list(self.choices), "meta": self.meta}

    @classmethod
    def from_json(cls, obj: Any) -> EvalItem:
        if not isinstance(obj, dict):
            raise SuiteError(f"an item must be a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - set(_FIELDS) - {"suite", "version"})
        if unknown:
            raise SuiteError(f"unknown field(s) {unknown}; an item has {list(_FIELDS)}")
        missing = [f for f in ("id", "kind", "prompt") if f not in obj]
        if missing:
            raise SuiteError(f"missing field(s) {missing}")
        return cls(**{f: obj[f] for f in _FIELDS if f in obj})


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    items: tuple[EvalItem, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise SuiteError(f"suite name={self.name!r} must be 1-100 characters of letters, digits, '_', '.', '-'"
                             " (it names the results file)")
        if not isinstance(self.version, str) or not self.version.strip():
            raise SuiteError(f"suite {self.name!r}: version={self.version!r} must be a non-empty string")
        if not self.items:
            raise SuiteError(f"suite {self.name!r} has no items")
        seen: set[str] = set()
        for item in self.items:
            if item.id in seen:
                raise SuiteError(f"suite {self.name!r}: item id {item.id!r} appears twice")
            seen.add(item.id)


# --- JSONL ---------------------------------------------------------------------------------------
def load_suite_jsonl(path: str | os.PathLike, name: str | None = None) -> Suite:
    """A suite from a JSONL file, one item per line (blank lines are skipped). Its name is `name`,
    else the lines' `suite` field, else the file's stem; its version the lines' `version` field,
    else a hash of the file's bytes (so a changed file is a new version)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except OSError as e:
        raise SuiteError(f"{path}: cannot read suite file: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise SuiteError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    items: list[EvalItem] = []
    first_line: dict[str, int] = {}
    header: dict[str, tuple[Any, int]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SuiteError(f"{where}: invalid JSON: {e.msg} at column {e.colno}") from None
        try:
            item = EvalItem.from_json(obj)
        except (SuiteError, TypeError) as e:
            raise SuiteError(f"{where}: {e}") from None
        for key in ("suite", "version"):
            if key in obj:
                if not isinstance(obj[key], str):
                    raise SuiteError(f"{where}: {key}={obj[key]!r} must be a string")
                seen = header.setdefault(key, (obj[key], lineno))
                if seen[0] != obj[key]:
                    raise SuiteError(f"{where}: {key}={obj[key]!r} differs from {seen[0]!r} on line {seen[1]}")
        if item.id in first_line:
            raise SuiteError(f"{where}: id {item.id!r} repeats line {first_line[item.id]}")
        first_line[item.id] = lineno
        items.append(item)
    if not items:
        raise SuiteError(f"{path}: no items")
    version = header["version"][0] if "version" in header else "sha256:" + hashlib.sha256(raw).hexdigest()[:16]
    name = name or (header["suite"][0] if "suite" in header else path.stem)
    try:
        return Suite(name, version, tuple(items))
    except SuiteError as e:
        raise SuiteError(f"{path}: {e}") from None


def write_suite_jsonl(suite: Suite, path: str | os.PathLike) -> Path:
    """Write the suite as JSONL (atomically: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for item in suite.items:
            line = {**item.to_json(), "suite": suite.name, "version": suite.version}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


# --- rendering ------------------------------------------------------------------------------------
def _choice_instruction(item: EvalItem) -> str:
    letters = item.letters
    listed = ", ".join(letters[:-1]) + " or " + letters[-1]
    return f'Answer with the letter of the correct option ({listed}), in the form "The answer is (X)".'


_INSTRUCTIONS = {
    "math": lambda item: "Solve the problem step by step. Put the final answer in \\boxed{}.",
    "choice": _choice_instruction,
    "code": lambda item: "Write the complete function, with any imports it needs, in a ```python code block.",
    "ifeval": lambda item: "",  # the instructions are the prompt itself
}


def render_prompt(item: EvalItem) -> str:
    """The user message sent to /v1/chat/completions: the prompt, then the per-kind instruction
    that tells the model how to give an answer the grader can read."""
    instruction = _INSTRUCTIONS[item.kind](item)
    return f"{item.prompt}\n\n{instruction}" if instruction else item.prompt


def render_completion(item: EvalItem) -> str:
    """The same text as a raw prompt for /v1/completions (no chat template: the server adds none)."""
    return render_prompt(item) + "\n\n"


# --- built-in: arith --------------------------------------------------------------------------------
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


# the templates say "she": the names match
_NAMES = {"en": ["Maria", "Aisha", "Lena", "Amara", "Yuki", "Priya"], "de": ["Anna", "Lea", "Mia", "Clara"],
          "fr": ["Camille", "Chloé", "Léa", "Inès"], "es": ["Lucía", "Sofía", "Elena", "Carmen"]}

# Each template: text per language, and a formula over the named values that gives the answer. The
# generator computes answers in code; tests re-derive them from the formula and check that every
# value appears in the prompt, so a template whose text and arithmetic disagree is caught.
_ARITH_TEXT = {
    "change": {
        "en": "{name} buys {a} notebooks at ${p} each and {b} pens at ${q} each. She pays with a ${bill} bill. "
              "How much change, in dollars, does she get?",
        "de": "{name} kauft {a} Hefte zu je {p} Euro und {b} Stifte zu je {q} Euro. Sie bezahlt mit einem "
              "{bill}-Euro-Schein. Wie viel Wechselgeld bekommt sie in Euro?",
        "fr": "{name} achète {a} cahiers à {p} euros chacun et {b} stylos à {q} euros chacun. Elle paie avec un "
              "billet de {bill} euros. Combien d'euros lui rend-on ?",
        "es": "{name} compra {a} cuadernos a {p} euros cada uno y {b} bolígrafos a {q} euros cada uno. Paga con "
              "un billete de {bill} euros. ¿Cuántos euros recibe de cambio?"},
    "marbles": {
        "en": "{name} has {n} marbles. She gives {u1}/{k1} of them to her brother, then {u2}/{k2} of the "
              "remaining marbles to a friend. How many marbles does she have left?",
        "de": "{name} hat {n} Murmeln. Sie gibt {u1}/{k1} davon ihrem Bruder und dann {u2}/{k2} der übrigen "
              "Murmeln einer Freundin. Wie viele Murmeln hat sie noch?",
        "fr": "{name} a {n} billes. Elle donne {u1}/{k1} de ses billes à son frère, puis {u2}/{k2} des billes "
              "restantes à une amie. Combien de billes lui reste-t-il ?",
        "es": "{name} tiene {n} canicas. Le da {u1}/{k1} de ellas a su hermano y luego {u2}/{k2} de las canicas "
              "restantes a una amiga. ¿Cuántas canicas le quedan?"},
    "fractions": {
        "en": "Compute {a}/{b} + {c}/{d} - {e}/{f}. Give the answer as a fraction in lowest terms."},
    "speed": {
        "en": "A cyclist rides {d1} km at {v1} km/h and then {d2} km at {v2} km/h. What is her average speed for "
              "the whole ride, in km/h? Give an exact answer.",
        "de": "Eine Radfahrerin fährt {d1} km mit {v1} km/h und danach {d2} km mit {v2} km/h. Wie hoch ist ihre "
              "Durchschnittsgeschwindigkeit für die ganze Fahrt in km/h? Gib das exakte Ergebnis an."},
    "tank": {
        "en": "A tank holds {cap} liters. A pipe fills it at {r} liters per minute while a leak drains {s} liters "
              "per minute. Starting empty, how many minutes does it take to fill the tank?",
        "fr": "Une cuve contient {cap} litres. Un tuyau la remplit à raison de {r} litres par minute pendant "
              "qu'une fuite en retire {s} litres par minute. Partant d'une cuve vide, combien de minutes faut-il "
              "pour la remplir ?"},
    "discount": {
        "en": "A jacket costs ${price}. It is discounted by {d}%, and then a sales tax of {t}% is added to the "
              "discounted price. What is the final price in dollars?",
        "es": "Una chaqueta cuesta {price} euros. Tiene un descuento del {d}% y luego se añade un impuesto del "
              "{t}% al precio rebajado. ¿Cuál es el precio final en euros?"},
    "workers": {
        "en": "{w1} workers can paint {h1} houses in {t1} days. Working at the same rate, how many days do {w2} "
              "workers need to paint {h2} houses? Give an exact answer."},
    "expression": {
        "en": "Evaluate ({a} + {b}) * {c} - {d} / {e}. Give an exact answer."},
    "ages": {
        "en": "A mother is {k} times as old as her son. In {y} years she will be {m} times as old as he will be "
              "then. How old is the son now?",
        "de": "Eine Mutter ist {k}-mal so alt wie ihr Sohn. In {y} Jahren wird sie {m}-mal so alt sein wie er "
              "dann. Wie alt ist der Sohn jetzt?"},
}
ARITH_FORMULAS = {
    "change": "bill - (a * p + b * q)",
    "marbles": "n * (1 - u1 / k1) * (1 - u2 / k2)",
    "fractions": "a / b + c / d - e / f",
    "speed": "(d1 + d2) / (d1 / v1 + d2 / v2)",
    "tank": "cap / (r - s)",
    "discount": "price * (100 - d) / 100 * (100 + t) / 100",
    "workers": "t1 * h2 / h1 * w1 / w2",
    "expression": "(a + b) * c - d / e",
    "ages": "y * (m - 1) / (k - m)",
}


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
    templates = list(_ARITH_TEXT)
    foreign = [(t, lang) for t in templates for lang in _ARITH_TEXT[t] if lang != "en"]
    items = []
    for i in range(size):
        if i % 4 == 3:  # a quarter in other languages, MGSM-style (the instruction stays English)
            template, lang = foreign[(i // 4) % len(foreign)]
        else:
            template, lang = templates[i % len(templates)], "en"
        values, answer = _arith_values(template, rng)
        name = rng.choice(_NAMES[lang])
        prompt = _ARITH_TEXT[template][lang].format(name=name, **values)
        items.append(EvalItem(f"arith-{i:03d}", "math", prompt, _fmt(answer, decimal=template == "discount"),
                              meta={"template": template, "lang": lang, "values": values,
                                    "formula": ARITH_FORMULAS[template]}))
    return Suite("arith", f"{GENERATOR_VERSION}-seed{seed}-n{size}", tuple(items))


# --- built-in: choice -------------------------------------------------------------------------------
UNITS = {("kilometers", "meters"): 1000, ("meters", "centimeters"): 100, ("kilograms", "grams"): 1000,
         ("hours", "minutes"): 60, ("minutes", "seconds"): 60, ("liters", "milliliters"): 1000,
         ("days", "hours"): 24, ("feet", "inches"): 12, ("yards", "feet"): 3, ("weeks", "days"): 7}
_NONSENSE = ["blickets", "daxes", "wugs", "zorbs", "feps", "toves", "glims", "snarks", "quobs", "vants"]


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
        a, b, c = rng.sample(_NONSENSE, 3)
        return (f"All {a} are {b}. No {b} are {c}. Which statement must be true?", f"No {a} are {c}.",
                [f"Some {a} are {c}.", f"All {c} are {a}.", f"All {b} are {a}."], {})
    if kind == "modus_tollens":
        x, y = rng.sample(["glorp", "frim", "tazzy", "plonk", "vexed", "zimmed"], 2)
        return (f"If a lamp is {x}, then it is {y}. Lamp L is not {y}. Which statement must be true?",
                f"Lamp L is not {x}.", [f"Lamp L is {x}.", f"Lamp L is {y}.", f"Every {y} lamp is {x}."], {})
    raise ValueError(f"unknown choice type {kind!r}")


CHOICE_TYPES = ("convert", "product", "prime", "not_prime", "gcd", "remainder", "fraction", "syllogism",
                "modus_tollens")


def choice_suite(seed: int = 0, size: int = 48) -> Suite:
    rng = random.Random(f"choice:{seed}")
    positions = [i % 4 for i in range(size)]
    rng.shuffle(positions)  # every letter is correct equally often (within one), in no pattern
    items = []
    for i in range(size):
        kind = CHOICE_TYPES[i % len(CHOICE_TYPES)]
        question, correct, wrong, meta = _choice_question(kind, rng)
        options = wrong[:]
        rng.shuffle(options)
        options.insert(positions[i], correct)
        lines = "\n".join(f"{_LETTERS[j]}. {o}" for j, o in enumerate(options))
        items.append(EvalItem(f"choice-{i:03d}", "choice", f"{question}\n\n{lines}", _LETTERS[positions[i]],
                              choices=tuple(options), meta={"type": kind, "answer": correct, **meta}))
    return Suite("choice", f"{GENERATOR_VERSION}-seed{seed}-n{size}", tuple(items))


# --- built-in: code, ifeval ---------------------------------------------------------------------------
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
             "ifeval": (ifeval_suite, 40)}
BUILTIN_SUITES = tuple(_BUILDERS)


def builtin_suites(seed: int = 0, size: int | None = None, names: tuple[str, ...] | list[str] | None = None
                   ) -> list[Suite]:
    """The built-in suites, each regenerated identically from (seed, size). `size` None keeps each
    suite's default (arith 48, choice 48, every code task, ifeval 40); code never exceeds its tasks."""
    names = list(names or BUILTIN_SUITES)
    unknown = [n for n in names if n not in _BUILDERS]
    if unknown:
        raise SuiteError(f"unknown built-in suite(s) {unknown}; known: {list(BUILTIN_SUITES)}")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise SuiteError(f"size={size!r} must be a positive integer or None")
    return [_BUILDERS[n][0](seed, size if size is not None else _BUILDERS[n][1]) for n in names]


def write_builtin_suites(out_dir: str | os.PathLike, seed: int = 0, size: int | None = None) -> list[Path]:
    """Write every built-in suite to `<out_dir>/<name>.jsonl`; returns the paths."""
    return [write_suite_jsonl(s, Path(out_dir) / f"{s.name}.jsonl") for s in builtin_suites(seed, size)]
