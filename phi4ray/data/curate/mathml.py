"""Formulas in HTML -> LaTeX, for the HTML extractor (phi4ray.data.curate.html).

`html_formulas` says which elements are formulas and gives their TeX: MathJax 2 sources
(`<script type="math/tex">`, its rendered copies skipped), KaTeX (the TeX annotation; its visual
HTML is a copy), MathJax 3 `<mjx-container>` (its assistive MathML), MathML, TeX in image alt
text (Wikipedia, WordPress LaTeX). A `<math>` element becomes TeX in two ways: its own TeX
annotation when the page kept one (KaTeX and many MathJax outputs carry
`<annotation encoding="application/x-tex">`, the author's source), otherwise a small structural
converter over the presentation elements (mi mn mo mrow mfrac msup
msub msubsup msqrt mroot mtext mover munder munderover mtable ...). Anything it does not know
falls back to its children, so the worst case is the formula's plain text, never an exception.
Nesting deeper than _MAX_DEPTH is read as plain text: the converter recurses, and a page may nest
MathML as deep as the HTML parser allows.
"""
from __future__ import annotations

import re

__all__ = ["html_formulas", "local_name", "tex_annotation", "to_tex"]

_MAX_DEPTH = 60
_TEX_ENCODINGS = {"application/x-tex", "tex", "text/x-tex", "application/x-latex", "latex"}

_GREEK = dict(zip(
    "αβγδεζηθικλμνξπρστυφχψωΓΔΘΛΞΠΣΥΦΨΩϵϕϑς",
    ("alpha beta gamma delta varepsilon zeta eta theta iota kappa lambda mu nu xi pi rho sigma tau "
     "upsilon varphi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega "
     "epsilon phi vartheta varsigma").split()))
_SYMBOLS = {
    "×": r"\times", "·": r"\cdot", "⋅": r"\cdot", "−": "-", "±": r"\pm", "∓": r"\mp", "÷": r"\div",
    "≤": r"\leq", "≥": r"\geq", "≠": r"\neq", "≈": r"\approx", "≡": r"\equiv", "∼": r"\sim",
    "∝": r"\propto", "→": r"\to", "←": r"\leftarrow", "⇒": r"\Rightarrow", "⇔": r"\Leftrightarrow",
    "↦": r"\mapsto", "∞": r"\infty", "∑": r"\sum", "∏": r"\prod", "∫": r"\int", "∮": r"\oint",
    "∂": r"\partial", "∇": r"\nabla", "∈": r"\in", "∉": r"\notin", "⊂": r"\subset",
    "⊆": r"\subseteq", "∪": r"\cup", "∩": r"\cap", "∅": r"\emptyset", "∀": r"\forall",
    "∃": r"\exists", "¬": r"\neg", "∧": r"\wedge", "∨": r"\vee", "…": r"\ldots", "⋯": r"\cdots",
    "′": "'", "∘": r"\circ", "⊗": r"\otimes", "⊕": r"\oplus", "⟨": r"\langle", "⟩": r"\rangle",
    "‖": r"\|", "{": r"\{", "}": r"\}", "%": r"\%", "#": r"\#", "&": r"\&", "$": r"\$", "_": r"\_",
    # invisible function application / times / separator / plus carry no visible symbol
    "\u2061": "", "\u2062": "", "\u2063": "", "\u2064": "",
    **{ch: "\\" + name for ch, name in _GREEK.items()},
}
_FUNCTIONS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "lim", "max", "min",
              "sup", "inf", "det", "dim", "ker", "gcd", "arg", "deg", "sinh", "cosh", "tanh", "Pr"}
_OVER_ACCENTS = {"¯": "overline", "‾": "overline", "^": "hat", "ˆ": "hat", "~": "tilde",
                 "˜": "tilde", "→": "vec", "⃗": "vec", "˙": "dot", "¨": "ddot", "⏞": "overbrace"}
_UNDER_ACCENTS = {"_": "underline", "̲": "underline", "⏟": "underbrace"}
_BIG_OPERATORS = {r"\sum", r"\prod", r"\int", r"\oint", r"\lim", r"\max", r"\min", r"\sup", r"\inf",
                  r"\bigcup", r"\bigcap"}
_CONTROL_WORD_END = re.compile(r"\\[A-Za-z]+$")
_MATH_IMG = re.compile(r"(?:^|[-_\s])(?:latex|tex|math|equation)(?:[-_\s]|$)", re.I)
_MATHJAX_RENDERED = frozenset("MathJax_Preview MathJax MathJax_Display MathJax_SVG MathJax_SVG_Display "
                              "MathJax_CHTML MathJax_PHTML MathJax_MathML".split())
_WS = re.compile(r"\s+")


def local_name(el) -> str:
    """Tag without namespace ({uri}mi) or prefix (m:mi), lower-cased; "" for comments."""
    tag = el.tag
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1].rsplit(":", 1)[-1].lower()


def html_formulas(el) -> list[tuple[str, bool]] | None:
    """(TeX, display) for each formula an HTML element stands for; None when it is not a formula
    (render it as usual); [] for a rendered copy whose source is elsewhere."""
    tag, cls = el.tag if isinstance(el.tag, str) else "", el.get("class") or ""
    if tag == "script":
        kind = (el.get("type") or "").lower()
        return [(el.text or "", "mode=display" in kind)] if kind.startswith("math/tex") else None
    if local_name(el) == "math":
        return [(to_tex(el), el.get("display") == "block" or el.get("mode") == "display")]
    if tag == "img":
        alt = el.get("alt") or ""
        if alt and (_MATH_IMG.search(cls) or alt.startswith(("{\\displaystyle", "{\\textstyle"))):
            return [(alt, "display" in cls)]
        return None
    tokens = cls.split()
    rendered = _MATHJAX_RENDERED.intersection(tokens)
    if rendered and _mathjax_source_follows(el):
        return []
    if not (rendered or "katex" in tokens or "katex-display" in tokens or tag in ("mjx-container", "svg")):
        return None
    maths = [m for m in el.iter() if local_name(m) == "math"]
    if not maths:
        return None
    display = "katex-display" in tokens or "MathJax_Display" in tokens or el.get("display") == "true"
    # KaTeX and MathJax wrap one formula (plus a visual copy); an <svg> may hold several
    return [(to_tex(m), display or m.get("display") == "block") for m in (maths if tag == "svg" else maths[:1])]


def _mathjax_source_follows(el) -> bool:
    sib = el.getnext()
    for _ in range(3):
        if sib is None or not isinstance(sib.tag, str):
            return False
        if sib.tag == "script":
            return (sib.get("type") or "").lower().startswith("math/tex")
        if not _MATHJAX_RENDERED.intersection((sib.get("class") or "").split()):
            return False
        sib = sib.getnext()
    return False


def tex_annotation(math) -> str:
    """The TeX source a `<math>` element carries in an annotation, or ""."""
    for el in math.iter():
        if local_name(el) == "annotation" and (el.get("encoding") or "").lower() in _TEX_ENCODINGS:
            return (el.text or "").strip()
    return ""


def to_tex(math) -> str:
    """TeX for a `<math>` element: its annotation if any, else converted from its structure."""
    return tex_annotation(math) or _join(_convert(c, 1) for c in _children(math)).strip()


def _children(el):
    return [c for c in el if isinstance(c.tag, str)]


def _join(parts) -> str:
    """Concatenate TeX pieces, with a space where a control word meets a letter (\\alpha x)."""
    out = []
    for part in parts:
        if part and out and part[0].isalpha() and _CONTROL_WORD_END.search(out[-1]):
            out.append(" ")
        if part:
            out.append(part)
    return "".join(out)


def _group(tex: str) -> str:
    """Brace a script argument unless it is a single character or control word."""
    return tex if len(tex) == 1 or _CONTROL_WORD_END.fullmatch(tex) else "{" + tex + "}"


def _token(el) -> str:
    text = _WS.sub(" ", el.text_content()).strip()
    if local_name(el) == "mi" and text in _FUNCTIONS:
        return "\\" + text
    if local_name(el) == "mi" and len(text) > 1 and text.isalpha() and text.isascii():
        return r"\mathrm{" + text + "}"
    return _join(_SYMBOLS.get(ch, ch) for ch in text)


def _convert(el, depth: int) -> str:
    name = local_name(el)
    if depth > _MAX_DEPTH:
        return _WS.sub(" ", el.text_content()).strip()
    if name in ("mi", "mn", "mo", "ms"):
        return _token(el)
    if name == "mtext":
        text = _WS.sub(" ", el.text_content())
        return r"\text{" + text.strip() + "}" if text.strip() else " "
    if name == "mspace":
        return " "
    if name in ("annotation", "annotation-xml", "none", "mprescripts"):
        return ""
    kids = _children(el)
    args = [_convert(c, depth + 1) for c in kids]
    first = args[0] if args else ""
    if name in ("semantics", "maction"):
        return first  # the presentation tree; annotations and alternates follow it
    if name == "mfrac" and len(args) == 2:
        kind = r"\binom" if el.get("linethickness") in ("0", "0px", "0em") else r"\frac"
        return f"{kind}{{{args[0]}}}{{{args[1]}}}"
    if name == "msqrt":
        return r"\sqrt{" + _join(args) + "}"
    if name == "mroot" and len(args) == 2:
        return rf"\sqrt[{args[1]}]{{{args[0]}}}"
    if name in ("msup", "msub") and len(args) == 2:
        return _group(args[0]) + ("^" if name == "msup" else "_") + _group(args[1])
    if name in ("msubsup", "munderover") and len(args) == 3:
        return f"{_group(args[0])}_{_group(args[1])}^{_group(args[2])}"
    if name in ("mover", "munder") and len(args) == 2:
        return _under_over(name, args[0], kids[1], args[1])
    if name == "mfenced":
        opening, closing = el.get("open", "("), el.get("close", ")")
        return opening + el.get("separators", ",")[:1].join(args) + closing
    if name == "mtable":
        return r"\begin{matrix}" + r" \\ ".join(args) + r"\end{matrix}"
    if name in ("mtr", "mlabeledtr"):
        return " & ".join(args)
    return _join(args)  # mrow, mstyle, mpadded, mphantom, menclose, mtd, merror, unknown


def _under_over(name: str, base: str, mark_el, mark: str) -> str:
    accents = _OVER_ACCENTS if name == "mover" else _UNDER_ACCENTS
    accent = accents.get(mark_el.text_content().strip())
    if accent:
        return f"\\{accent}{{{base}}}"
    if base in _BIG_OPERATORS:
        return base + ("^" if name == "mover" else "_") + _group(mark)
    return f"\\{'overset' if name == 'mover' else 'underset'}{{{mark}}}{{{base}}}"
