r"""Answer expressions beyond plain numbers: our whitelist parser, and math-verify for the rest.

Completions are untrusted text, so nothing here calls eval/sympify on them: a tokenizer accepts
only digits, one-letter variables, + - * / ^ **, brackets and a few commands (\frac \sqrt \pi
\cdot \times \div \ln \sin \cos \tan \exp), and a recursive-descent parser builds the sympy
objects itself. Exponents stay small, nesting shallow, and any other input gives None.
Used by `phi4ray.verify.oracles.math_equal` once two answers are not plain numbers.

Answers written with anything else (\binom, \log_b, n!, |x|, matrices, Greek letters, "x = a or
x = b"; `in_vocabulary` tells) go to HF's math-verify (`library_equal`), which parses full LaTeX
with latex2sympy. Its own timeout is signal.alarm, which raises outside the main thread, and our
oracles run in threads (threaded Ray actors, thread pools); without it, sympy can compute
9^{9^{9}} or (10^{8})! for ever. So it runs in one helper process per process (started on first
use, stopped at exit), each verdict under a deadline after which the helper is killed, and
restarted on the next call.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["parse_expr", "in_vocabulary", "library_equal"]

_TOKEN = re.compile(r"\d+\.?\d*|\.\d+|\\[A-Za-z]+|[A-Za-z]|\*\*|[-+*/^(){}\[\]]")
_FUNCS = {"\\ln": "log", "\\sin": "sin", "\\cos": "cos", "\\tan": "tan", "\\exp": "exp"}
_ATOM_START = {"(", "{", "[", "\\frac", "\\sqrt", "\\pi", *_FUNCS}
_COMMANDS = _ATOM_START | {"\\cdot", "\\times", "\\div"}


class _Bad(Exception):
    pass


class _Parser:
    def __init__(self, sp, tokens: list[str]):
        self.sp, self.toks, self.i = sp, tokens, 0

    def peek(self) -> str:
        return self.toks[self.i] if self.i < len(self.toks) else ""

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if not tok or (want is not None and tok != want):
            raise _Bad
        self.i += 1
        return tok

    def expr(self):
        v = self.term()
        while self.peek() in ("+", "-"):
            v = v + self.term() if self.take() == "+" else v - self.term()
        return v

    def term(self):
        v = self.unary()
        while tok := self.peek():
            if tok in ("*", "\\cdot", "\\times", "/", "\\div"):
                v = v * self.unary() if self.take() not in ("/", "\\div") else v / self.unary()
            elif tok in _ATOM_START or tok[0].isalnum() or tok[0] == ".":
                v = v * self.power()  # implicit product: 2x, 2\sqrt{2}, (x-1)(x+1)
            else:
                break
        return v

    def unary(self):
        if self.peek() in ("-", "+"):
            return -self.unary() if self.take() == "-" else self.unary()
        return self.power()

    def power(self):
        base = self.atom()
        if self.peek() not in ("^", "**"):
            return base
        self.take()
        e = self.unary()
        # exact arithmetic must stay small: 9^{9^{9}} would be computed digit by digit
        if e.is_number and (abs(float(e.evalf(15))) > 64 or (e.is_Rational and e.q > 64)):
            raise _Bad
        return self.sp.Pow(base, e)

    def atom(self):
        sp, tok = self.sp, self.take()
        if tok[0].isdigit() or tok[0] == ".":
            return sp.Rational(tok)
        if tok.isalpha():
            if self.peek().isalpha():  # a word, not a product of one-letter variables
                raise _Bad
            return sp.Symbol(tok)
        if tok in ("(", "{", "["):
            v = self.expr()
            self.take(")}]"["({[".index(tok)])
            return v
        if tok == "\\pi":
            return sp.pi
        if tok == "\\frac":
            return self.atom() / self.atom()
        if tok == "\\sqrt" and self.peek() == "[":
            self.take()
            n = self.expr()
            self.take("]")
            if not (n.is_Integer and 2 <= n <= 64):
                raise _Bad
            x = self.atom()  # the real cube root of -8 is -2; symbolic radicands keep the principal one
            return sp.real_root(x, n) if x.is_number else sp.root(x, n)
        if tok == "\\sqrt":
            return sp.sqrt(self.atom())
        if tok in _FUNCS:
            return getattr(sp, _FUNCS[tok])(self.power())
        raise _Bad


def in_vocabulary(s: str) -> bool:
    """Whether every character of a normalized answer is a token of our grammar (whether it parses
    is another matter): when not, `library_equal` is the judge."""
    pos = 0
    for m in _TOKEN.finditer(s):
        if m.start() != pos or (m.group()[0] == "\\" and m.group() not in _COMMANDS):
            return False
        pos = m.end()
    return pos == len(s)


def parse_expr(s: str, sp):
    """The sympy value of a normalized answer `s` (see phi4ray.verify.oracles.normalize_answer), built with
    the sympy module `sp` (the caller imports it); None for anything outside the grammar."""
    tokens, pos, depth = [], 0, 0
    for m in _TOKEN.finditer(s):
        tok = m.group()
        depth += (tok in "({[") - (tok in ")}]")
        # unknown commands, towers (which overflow even numerically) and deep nesting (recursion)
        if m.start() != pos or (tok[0] == "\\" and tok not in _COMMANDS) or depth > 20:
            return None
        tokens.append(tok)
        pos = m.end()
    if pos != len(s) or sum(t in ("^", "**", "\\exp") for t in tokens) > 2:
        return None
    p = _Parser(sp, tokens)
    try:
        v = p.expr()
    except (_Bad, TypeError, ValueError, ZeroDivisionError):
        return None
    return v if p.i == len(tokens) else None


# --- math-verify, in a helper process under a deadline ---------------------------------------
DEADLINE_S = 10.0     # one verdict, after which the helper is killed (its own timeouts are 3 s per step)
_START_S = 120.0      # the helper's first import of sympy and the LaTeX parser, on a loaded machine


class _Helper:
    """One `python -m phi4ray.verify.mathexpr` child speaking JSON lines; calls from threads take turns."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """A forked child starts afresh: the parent's helper and lock are the parent's."""
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def _line(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None

    def ask(self, gold: str, pred: str, deadline: float) -> bool:
        with self.lock:
            try:
                if self.proc is None or self.proc.poll() is not None:
                    self.stop()
                    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
                    self.proc = subprocess.Popen([sys.executable, "-m", "phi4ray.verify.mathexpr"], stdin=subprocess.PIPE,
                                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
                    if self._line(_START_S) != "ready\n":
                        raise TimeoutError("math-verify helper did not start")
                self.proc.stdin.write(json.dumps([gold, pred]) + "\n")
                self.proc.stdin.flush()
                answer = self._line(deadline)
                if answer is None:
                    raise TimeoutError("math-verify verdict past its deadline")
                return answer == "1\n"
            except (OSError, ValueError, TimeoutError):  # a dead, stuck or garbled helper: no verdict
                self.stop()
                return False


_HELPER = _Helper()
atexit.register(_HELPER.stop)
os.register_at_fork(after_in_child=_HELPER.forget)


def _as_math(s: str) -> str:
    """math-verify extracts LaTeX only between delimiters: a bare "x^2-1" would be read as its digits."""
    return "$" + s.strip().strip("$").strip() + "$"


def library_equal(pred: str, ref: str, deadline: float | None = None) -> bool:
    """math-verify's verdict on two answers (the reference is its gold); False past the deadline."""
    return _HELPER.ask(_as_math(ref), _as_math(pred), DEADLINE_S if deadline is None else deadline)


def _serve() -> None:
    """The helper's loop: [gold, pred] per input line, "1" or "0" per output line."""
    out, sys.stdout = sys.stdout, sys.stderr  # nothing a library prints may corrupt the protocol
    import logging  # deferred, as the next: only the helper process needs them

    from math_verify import parse, verify  # deferred: only the helper process loads the LaTeX parser
    logging.disable(logging.WARNING)
    print("ready", file=out, flush=True)
    for line in sys.stdin:
        try:
            gold, pred = json.loads(line)
            # in the helper's main thread, math-verify's signal timeouts work and stop runaway sympy
            ok = verify(parse(gold, parsing_timeout=3), parse(pred, parsing_timeout=3), timeout_seconds=3)
        except Exception:  # bad input or a parser failure is "not shown equal", as in the parent
            ok = False
        print("1" if ok else "0", file=out, flush=True)


if __name__ == "__main__":
    _serve()
