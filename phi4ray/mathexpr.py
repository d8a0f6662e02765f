r"""A whitelist parser for answer expressions: LaTeX-ish math text -> a sympy object.

Completions are untrusted text, so nothing here calls eval/sympify on them: a tokenizer accepts
only digits, one-letter variables, + - * / ^ **, brackets and a few commands (\frac \sqrt \pi
\cdot \times \div \ln \sin \cos \tan \exp), and a recursive-descent parser builds the sympy
objects itself. Exponents stay small, nesting shallow, and any other input gives None.
Used by `phi4ray.oracles.math_equal` once two answers are not plain numbers.
"""
from __future__ import annotations

import re

__all__ = ["parse_expr"]

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


def parse_expr(s: str, sp):
    """The sympy value of a normalized answer `s` (see phi4ray.oracles.normalize_answer), built with
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
