r"""Answer oracles: did a completion reach a known answer?

Pivotal Token Search scores prefixes by how often their continuations are judged right, evaluation
grades benchmarks, and the synthesis plurality filter groups sampled answers; all three use these
judges. Completions are untrusted text, so nothing here calls eval/sympify on them: numbers go
through a small exact parser (Fraction), expressions through a whitelist tokenizer that builds
sympy objects itself (math-verify, for what that grammar lacks, parses LaTeX with an ANTLR grammar
in a helper process). No function raises on any text (None / False instead), and the work is
linear in the input or capped by a length guard, a math-verify verdict by its deadline.

`math_equal` treats as equal:
- numbers of the same exact value: 0.5, 1/2, \frac{1}{2}, \dfrac12; 1,000 and 1000; 1e3; 2^{3};
  \sqrt{16}; mixed numbers 1\frac{1}{2}; 2\times10^{3}. A decimal may stand, within rel_tol, for a
  value with no finite decimal expansion (0.333333 = 1/3, 1.414214 = \sqrt{2}); values that both
  terminate must agree exactly (0.33 != 1/3, 1000000.5 != 1000000);
- dressing: $, \left/\right, spacing, \text/\mbox/\mathrm wrappers, a unit word after a number
  ("10 cm", "\text{10 cm}" = 10), degrees, \$, a trailing period, an "x =" prefix;
- percent: parse_number("50%") is 1/2, its value; math_equal also lets "5\%" match a bare 5,
  because references to "what percent" questions usually drop the sign;
- tuples and intervals element-wise with the same brackets ("[1,2)" != "[1,2]"); bare comma lists,
  \{..\} sets and "x = .." solution lists in any order ("x=1, y=2" pairs values by variable);
- expressions by exact sympy arithmetic, then evaluation at fixed points when variables remain
  (2\sqrt{2} = \sqrt{8}, x^2-1 = (x-1)(x+1)), when both sides are at most 200 characters of digits,
  + - * / ^, brackets, \frac \sqrt \pi \cdot \times \div \ln \sin \cos \tan \exp and one-letter
  variables (adjacent letters are a word, not a product: "yes" != "sey"), parsed by the whitelist
  grammar of `phi4ray.verify.mathexpr`;
- answers written outside that grammar (\binom, \log_b, n!, |x|, matrices, Greek letters,
  "x = 1 \text{ or } x = 2", \infty): HF's math-verify judges them (the reference is its gold),
  in a helper process under a deadline (`phi4ray.verify.mathexpr.library_equal`). What our grammar reads
  stays ours: there it is as right or righter (units, \text answers, 1e3, \sqrt[3]{-8} = -2, "yes"
  is no product y*e*s, (1,2) is no bare list 1,2), exact, and hundreds of times faster
  (benchmarks/math_equal.py).
Not handled: inequalities against intervals ("x > 3" vs "(3, \infty)"), unit conversion (10 cm vs
0.1 m).
"""
from __future__ import annotations

import math
import re
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from phi4ray.verify.mathexpr import in_vocabulary, library_equal, parse_expr
from phi4ray.verify.sandbox import CodeOracle

__all__ = ["last_boxed", "extract_answer", "normalize_answer", "parse_number", "math_equal",
           "extract_choice", "MathOracle", "ChoiceOracle", "get_oracle"]

_MAX_NUM = 200    # longer is not a plain number; also keeps int() far from its digit limit
_MAX_SYM = 200    # the most that sympy sees of one side
_MAX_LIST = 50    # elements compared in a comma list
_SYM_CALLS = 20   # sympy comparisons per math_equal call, however the answer is nested
# what math-verify is asked about: one line of ASCII, not too long (its time grows with the text).
# Its extractor takes the first number it finds, so "9\left(]" or a number amid binary junk would be 9.
_LIBRARY_TEXT = re.compile(r"[ -~]{1,300}")

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE = re.compile(r"\\.|[{}]", re.S)  # \{ and \} are literal braces, not grouping


def _group_end(s: str, i: int) -> int:
    """Index just past the brace group that opens at s[i] == '{'; -1 if it never closes."""
    depth = 0
    for m in _BRACE.finditer(s, i):
        depth += {"{": 1, "}": -1}.get(m.group(), 0)
        if depth == 0:
            return m.end()
    return -1


def _last(matches: Iterator[re.Match]) -> re.Match | None:
    """The last match (None if none), in constant memory."""
    tail = deque(matches, maxlen=1)
    return tail[0] if tail else None


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{..} / \\fbox{..} (or "\\boxed 5"); None if absent or unclosed."""
    last = _last(_BOX.finditer(text if isinstance(text, str) else ""))
    if last is None:
        return None
    j = last.end()
    while j < len(text) and text[j] in " \t":
        j += 1
    if j < len(text) and text[j] == "{":
        end = _group_end(text, j)
        # a truncated last box is no answer; an earlier box was an intermediate result
        return text[j + 1:end - 1] if end > 0 else None
    bare = re.compile(r"[^\s$]+").match(text, j) if j > last.end() else None  # "\boxed 5"
    return bare.group() if bare else None


_MARKER = re.compile(r"####|\banswer(?:\s+is\b|\s*:)", re.I)
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?", re.A)


def extract_answer(text: str) -> str | None:
    """Final answer of a solution: the last box, else the text after the last "answer is" /
    "Answer:" / "####" up to the end of its sentence, else the last number; None if none."""
    box = last_boxed(text)
    if box is not None and box.strip():
        return box.strip()
    marker = _last(_MARKER.finditer(text if isinstance(text, str) else ""))
    if marker is not None:
        rest = text[marker.end():marker.end() + 1000].lstrip(" \t\r\n:*").split("\n", 1)[0]
        answer = re.split(r"\.(?=\s|$)", rest, maxsplit=1)[0].strip().strip("*$ ").rstrip(".").strip()
        if answer:
            return answer
    number = _last(_NUMBER.finditer(text if isinstance(text, str) else ""))
    return number.group() if number else None


_SPACING = re.compile(r"\\[,;:! ]|\\q?quad(?![A-Za-z])|~")
_DROP = re.compile(r"\\(?:left|right|displaystyle|[bB]igg?[lr]?)(?![A-Za-z])|\\?\$|°"
                   r"|\^\s*\{?\s*\\circ\s*\}?|\\degree(?![A-Za-z])")
_XFRAC = re.compile(r"\\[dtc]frac(?![A-Za-z])")
_WRAPPER = r"\\(text(?:rm|bf|it|normal)?|mbox|mathrm|operatorname|mathbf|mathit|boldsymbol)\s*\{"
_WRAP = re.compile(_WRAPPER + r"|\\[{}]|[{}]")
_WORDY = {"text", "textrm", "textbf", "textit", "textnormal", "mbox", "mathrm", "operatorname"}
_PERCENT = re.compile(r"\\?%|\bpercent\b")  # no leading \s*: that is quadratic on long blank runs
_SHORTHAND = [(re.compile(r"\\frac\s*([0-9A-Za-z])\s*([0-9A-Za-z])"), r"\\frac{\1}{\2}"),
              (re.compile(r"\\frac\s*(\{[^{}]*\})\s*([0-9A-Za-z])"), r"\\frac\1{\2}"),
              (re.compile(r"\\frac\s*([0-9A-Za-z])\s*(?=\{)"), r"\\frac{\1}"),
              (re.compile(r"\\sqrt\s*([0-9A-Za-z])"), r"\\sqrt{\1}")]
_PREFIX = re.compile(r"^\\?[A-Za-z]+(?:_\{?[A-Za-z0-9]+\}?)?\s*=\s*")
_UNIT = re.compile(r"(\S+)\s+([A-Za-z][A-Za-z./ ]*(?:\^\{?\d\}?[A-Za-z./ ]*)?)")
_NOT_UNITS = {"and", "or", "to", "is", "if", "for", "when", "where", "but", "not", "then"}
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?")


def _unwrap(s: str) -> str:
    """Drop \\text{..}-like wrappers but keep their content, in one pass (deep nesting stays cheap)."""
    if not re.search(_WRAPPER, s):  # plain braces would pass through unchanged
        return s
    out, keep_close, pos = [], [], 0
    for m in _WRAP.finditer(s):
        out.append(s[pos:m.start()])
        pos, tok = m.end(), m.group()
        if m.group(1):
            keep_close.append(False)
            out.append(" " if m.group(1) in _WORDY else "")  # "10\text{cm}" reads as "10 cm"
        elif tok == "{":
            keep_close.append(True)
            out.append(tok)
        elif tok != "}" or not keep_close or keep_close.pop():
            out.append(tok)
    out.append(s[pos:])
    return "".join(out)


def _finish(s: str) -> str:
    s = "".join(s.split()).rstrip(".")
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    for _ in range(3):  # "{5}" is 5; past answer length, checking is just a scan of junk
        if 1 < len(s) <= 1000 and s[0] == "{" and s[-1] == "}" and _group_end(s, 0) == len(s):
            s = s[1:-1]
    return s


def normalize_answer(s: str) -> str:
    """Canonical spelling of an answer (see the module docstring); "" for non-strings."""
    if not isinstance(s, str):
        return ""
    # "5 m" may be a unit but "2 x" is a product; one letter counts as a unit only inside \text
    short_units = bool(re.search(r"\\(?:text|mbox|mathrm)", s))
    s = _XFRAC.sub(r"\\frac", _DROP.sub("", _SPACING.sub(" ", s)))
    s = _PERCENT.sub("%", _unwrap(s).replace("{,}", ","))
    for pattern, repl in _SHORTHAND:
        s = pattern.sub(repl, s)
    s = " ".join(s.split()).rstrip(".").strip()
    if s.count("=") == 1:
        s = _PREFIX.sub("", s, count=1)
    unit = _UNIT.fullmatch(s) if len(s) <= _MAX_NUM else None
    if (unit and (short_units or len(unit[2].strip()) > 1) and not _NOT_UNITS & set(unit[2].lower().split())
            and _value(_finish(unit[1])) is not None):
        s = unit[1]
    return _finish(s)


_DEC = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PLAIN = re.compile(_DEC + r"(?:[eE][-+]?\d{1,3})?")  # exponent capped: 1e999999999 is no answer
_RATIO = re.compile(rf"({_DEC})/({_DEC})")
_SCI = re.compile(rf"({_DEC})(?:\\times|\\cdot|\*)10\^\{{?(-?\d{{1,3}})\}}?")
_POW = re.compile(rf"({_DEC})\^\{{?(-?\d{{1,2}})\}}?")
_MIXED = re.compile(r"(\d+)(\\frac\{.*)", re.S)


def _value(s: str, depth: int = 0) -> Fraction | None:
    """Exact value of a normalized plain number, or None."""
    if not s or len(s) > _MAX_NUM or depth > 8:
        return None
    if s[0] in "+-":
        v = _value(s[1:], depth + 1)
        return -v if v is not None and s[0] == "-" else v
    if s[-1] == "%":
        v = _value(s[:-1], depth + 1)
        return v / 100 if v is not None else None
    if s[0] == "{" and _group_end(s, 0) == len(s):
        return _value(s[1:-1], depth + 1)
    if _PLAIN.fullmatch(s):
        return Fraction(s)
    if m := _RATIO.fullmatch(s):
        return Fraction(m[1]) / Fraction(m[2]) if Fraction(m[2]) else None
    if m := _SCI.fullmatch(s):
        return Fraction(m[1]) * Fraction(10) ** int(m[2])
    if m := _POW.fullmatch(s):
        return None if Fraction(m[1]) == 0 and int(m[2]) < 0 else Fraction(m[1]) ** int(m[2])
    if s.startswith("\\frac{"):
        mid = _group_end(s, 5)
        if 0 < mid < len(s) and s[mid] == "{" and _group_end(s, mid) == len(s):
            num, den = _value(s[6:mid - 1], depth + 1), _value(s[mid + 1:-1], depth + 1)
            return num / den if num is not None and den else None
    elif s.startswith("\\sqrt{") and _group_end(s, 5) == len(s):
        v = _value(s[6:-1], depth + 1)
        if v is not None and v >= 0:
            n, d = math.isqrt(v.numerator), math.isqrt(v.denominator)
            return Fraction(n, d) if n * n == v.numerator and d * d == v.denominator else None
    elif m := _MIXED.fullmatch(s):
        # only a proper fraction makes "2\frac{1}{3}" a mixed number rather than a product
        f = _value(m[2], depth + 1)
        return int(m[1]) + f if f is not None and 0 <= f < 1 else None
    return None


def parse_number(s: str) -> Fraction | None:
    """Exact value of a plain number: "1,234", "-2.50", "3/4", "\\frac34", "1\\frac{1}{2}", "2^{3}",
    "\\sqrt{16}", "2\\times10^{3}", "1e3"; "50%" is 1/2. None otherwise, irrational roots included."""
    try:
        return _value(normalize_answer(s))
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _close(x: Fraction, x_dec: bool, y: Fraction, y_dec: bool, tol: Fraction) -> bool:
    def terminates(f: Fraction) -> bool:
        d = f.denominator >> ((f.denominator & -f.denominator).bit_length() - 1)
        while d % 5 == 0:
            d //= 5
        return d == 1
    if x == y:
        return True
    # a rounded decimal may only stand for a value that it cannot write exactly
    if (x_dec and not terminates(y)) or (y_dec and not terminates(x)):
        return abs(x - y) <= tol * max(abs(x), abs(y))
    return False


_BRACKETS = re.compile(r"[(\[{]|[)\]}]|,")


def _top_split(s: str) -> tuple[list[str] | None, bool]:
    """Parts between top-level commas (None past _MAX_LIST), and whether the first bracket of s
    closes at its very end: "(1,2)" but not "(1,2),(3,4)"."""
    parts, depth, start, wraps = [], 0, 0, None
    for m in _BRACKETS.finditer(s):
        if m.group() != ",":
            depth += 1 if m.group() in "([{" else -1
            if depth <= 0 and wraps is None:
                wraps = m.end() == len(s)
        elif depth == 0:
            parts.append(s[start:m.start()])
            start = m.end()
            if len(parts) > _MAX_LIST:
                return None, bool(wraps)
    return parts + [s[start:]], bool(wraps)


def _shape(s: str) -> tuple[str | None, list[str] | None]:
    """("()" / "[)" / ...: ordered tuple or interval, "set": unordered, None: single), parts."""
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set", _top_split(s[2:-2])[0]
    parts, wraps = _top_split(s)
    if wraps and s[0] in "([" and s[-1] in ")]":
        inner = _top_split(s[1:-1])[0]
        if inner is None or len(inner) > 1:
            return s[0] + s[-1], inner
    return ("set", parts) if parts is None or len(parts) > 1 else (None, parts)


def _by_name(parts: list[str]) -> dict[str, str] | None:
    """{variable: value} when the parts are equations in distinct variables ("x=1, y=2")."""
    found = [_PREFIX.match(p) for p in parts]
    names = [m.group().rstrip("= ") for m in found if m]
    if len(names) < len(parts) or len(set(names)) < len(names):
        return None
    return {n: p[m.end():] for n, p, m in zip(names, parts, found)}


def _all(verdicts) -> bool | None:
    """Three-valued "and": False if any is False, else None (undecided) if any is None."""
    undecided = False
    for v in verdicts:
        if v is False:
            return False
        undecided |= v is None
    return None if undecided else True


def _structured(a: str, b: str, shapes, tol: Fraction, depth: int, budget: list[int]) -> bool | None:
    (ka, pa), (kb, pb) = shapes
    if pa is None or pb is None:
        return False
    if ka != kb:
        # a tuple is no set and no interval, but "x = 1 \text{ or } x = 2" is one part to us, not a
        # single answer: unequal shapes decide only when we can read every part
        return False if all(in_vocabulary(p) for p in pa + pb) else None
    if len(pa) != len(pb):
        return False

    def same(p: str, q: str) -> bool | None:
        return _equal(p, q, tol, depth + 1, budget)

    def key(p: str):
        n = normalize_answer(p)
        v = _value(n)
        return n if v is None else v

    if ka != "set":
        return _all(map(same, pa, pb))
    na, nb = _by_name(pa), _by_name(pb)
    if na is not None or nb is not None:
        if na is None or nb is None or na.keys() != nb.keys():
            return False
        return _all(same(na[k], nb[k]) for k in na)
    if Counter(map(key, pa)) == Counter(map(key, pb)):
        return True
    if len(pa) > 8:  # pairwise matching is quadratic; long lists must match by value or text
        return False
    unused, undecided = list(pb), False
    for p in pa:  # greedy is enough: equality here is transitive in practice
        hit = None
        for i, q in enumerate(unused):
            verdict = same(p, q)
            undecided |= verdict is None
            if verdict:
                hit = i
                break
        if hit is None:
            return None if undecided else False
        unused.pop(hit)
    return True


def _equal(x: str, y: str, tol: Fraction, depth: int, budget: list[int]) -> bool | None:
    """True / False, or None when an answer is written outside our grammar (math-verify's turn)."""
    a, b = normalize_answer(x), normalize_answer(y)
    if not a or not b or a == b:
        return bool(a) and a == b
    shapes = _shape(a), _shape(b)
    if depth < 4 and (shapes[0][0] is not None or shapes[1][0] is not None):
        return _structured(a, b, shapes, tol, depth, budget)
    va, vb = _value(a), _value(b)
    if va is not None and vb is not None:
        pairs = [(va, vb)] + [(va * 100, vb)] * a.endswith("%") + [(va, vb * 100)] * b.endswith("%")
        return any(_close(p, "." in a, q, "." in b, tol) for p, q in pairs)
    if a.isalpha() and b.isalpha():
        return len(a) > 1 and a.lower() == b.lower()
    if len(a) > _MAX_SYM or len(b) > _MAX_SYM or budget[0] <= 0:
        return False
    budget[0] -= 1
    return _sym_equal(a, b, tol)


def math_equal(pred: str | None, ref: str | None, rel_tol: float = 1e-6, *, library: bool = True) -> bool:
    """Whether two answers mean the same thing (see the module docstring); False for None/empty.
    `library=False` leaves answers outside our grammar unequal instead of asking math-verify."""
    pred, ref = (str(v) if isinstance(v, (int, float, Fraction)) and not isinstance(v, bool)
                 else v for v in (pred, ref))
    if not isinstance(pred, str) or not isinstance(ref, str):
        return False
    try:
        tol = max(Fraction(repr(float(rel_tol))), Fraction(0))
    except (TypeError, ValueError, OverflowError):
        tol = Fraction(0)
    try:
        verdict = _equal(pred, ref, tol, 0, [_SYM_CALLS])
    except Exception:  # sympy and deep recursion can fail in ways not worth enumerating
        return False
    if verdict is None:
        return (library and bool(_LIBRARY_TEXT.fullmatch(pred.strip()) and _LIBRARY_TEXT.fullmatch(ref.strip()))
                and library_equal(pred, ref))
    return verdict


def _to_sympy(s: str, sp):
    v = _value(s)
    if v is not None:  # the exact parser knows mixed numbers and percent; the expression grammar does not
        return sp.Rational(v.numerator, v.denominator)
    return parse_expr(s, sp)


def _sym_equal(a: str, b: str, tol: Fraction) -> bool | None:
    import sympy as sp  # deferred: about a second to import, paid only once an answer is not a plain number

    ea, eb = _to_sympy(a, sp), _to_sympy(b, sp)
    if ea is None or eb is None:  # refused as too big or malformed, or written in words we lack
        return False if in_vocabulary(a) and in_vocabulary(b) else None
    d = ea - eb
    if d == 0:
        return True
    if ea.is_Rational and eb.is_Rational:
        return _close(Fraction(int(ea.p), int(ea.q)), "." in a, Fraction(int(eb.p), int(eb.q)), "." in b, tol)
    syms = sorted(d.free_symbols, key=str)
    eps = tol if "." in a or "." in b else Fraction(1, 10 ** 20)
    eps, checked = sp.Rational(eps.numerator, eps.denominator), 0
    for k in range(3 if syms else 1):
        point = {s: sp.Rational(31 + 17 * j + 5 * k, 13 + 4 * k + j) for j, s in enumerate(syms)}
        try:
            dv, av, bv = (abs(e.evalf(40, subs=point)) for e in (d, ea, eb))
            if not all(v.is_number and v.is_finite for v in (dv, av, bv)):
                continue  # a pole or a branch point: try the next point
            if bool(dv > eps * max(av, bv)):
                return False
        except (TypeError, ValueError, ArithmeticError):  # evalf of e.g. sin(zoo)
            continue
        checked += 1
    return checked > 0


# --- multiple choice ------------------------------------------------------------------------
@lru_cache(maxsize=32)
def _choice_patterns(upper: str) -> tuple[re.Pattern, ...]:
    up, low = f"[{upper}]", f"[{upper.lower()}]"
    # a lower-case letter only counts in parentheses: "the answer is a bit subtle" names no choice
    letter = rf"(?:({up})|(?<=\()({low})(?=\)))(?![A-Za-z0-9])"
    phrase = re.compile(r"(?i:answer)(?:\s+(?i:is))?[\s:]*(?:(?i:option|choice)\s*)?"
                        r"[*$({\[]*(?:\\text(?:bf)?\{\(?)?" + letter)
    bold = re.compile(rf"\*\*\s*\(?({up})\)?[.:)]?\s*\*\*")
    bare = re.compile(rf"(?<![A-Za-z0-9])({up})(?![A-Za-z0-9])|\(({low})\)")
    return phrase, bold, bare


def extract_choice(text: str, letters: str = "ABCD") -> str | None:
    """The chosen letter, upper case: from a box, an "answer is (B)" phrase, **B**, else the last
    standalone capital (a lower-case letter only as "(b)"); None when there is none."""
    if not isinstance(text, str) or not isinstance(letters, str):
        return None
    upper = "".join(dict.fromkeys(c.upper() for c in letters if c.isascii() and c.isalpha()))
    if not upper:
        return None
    box = last_boxed(text)
    if box is not None:
        m = re.match(r"\(?([A-Za-z])(?:\)|[.:]|$)", re.sub(r"\\text(?:bf|rm)?|[{}$*\s]", "", box))
        if m and m[1].upper() in upper:
            return m[1].upper()
    for pattern in _choice_patterns(upper):  # in order of trust: phrase, bold, any lone letter
        last = _last(pattern.finditer(text))
        if last is not None:
            return (last[1] or last[last.lastindex]).upper()
    return None


# --- oracles --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MathOracle:
    """MathOracle()(completion, reference): the completion's final answer equals the reference."""
    rel_tol: float = 1e-6

    def __call__(self, completion: str, reference: str) -> bool:
        ref = last_boxed(reference) or reference  # a reference given as a whole solution works too
        return math_equal(extract_answer(completion), ref, self.rel_tol)


@dataclass(frozen=True)
class ChoiceOracle:
    """ChoiceOracle("ABCD")(completion, "B"): the completion picked the reference letter."""
    letters: str = "ABCD"

    def __call__(self, completion: str, reference: str) -> bool:
        ref = reference.strip().strip("()[]. *$").upper() if isinstance(reference, str) else ""
        if len(ref) != 1:
            ref = extract_choice(reference, self.letters) or ""
        return ref != "" and extract_choice(completion, self.letters) == ref


_KINDS = ("math", "choice", "code")


def get_oracle(kind: str, **kw):
    """The oracle for a task kind: "math", "choice", or "code" (phi4ray.verify.sandbox.CodeOracle)."""
    if kind == "math":
        return MathOracle(**kw)
    if kind == "choice":
        return ChoiceOracle(**kw)
    if kind == "code":
        return CodeOracle(**kw)
    raise ValueError(f"unknown oracle kind {kind!r}; known kinds: {', '.join(_KINDS)}")
