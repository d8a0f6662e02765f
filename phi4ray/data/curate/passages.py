"""Passages: documents cut into bounded pieces at paragraph and heading boundaries, and cheap
heuristic factual / reasoning scores for them.

Phi-4 curates seeds by splitting pages into passages scored for factual and reasoning content;
synthesis cuts its prose seeds with `segment_passages`, and curation's heuristic annotator (the
weak-label fallback with no judge) scores documents with `passage_scores`.
- `segment_passages` cuts a document at paragraph and heading boundaries into passages of bounded
  size, keeping fenced code blocks and $$ formulas whole;
- `passage_scores` gives heuristic factual / reasoning scores (see its docstring for what they
  measure and miss).
"""
from __future__ import annotations

import bisect
import re

__all__ = ["segment_passages", "passage_scores"]

_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}(?:[ \t]|$)")
_SETEXT = re.compile(r"^[ \t]{0,3}(?:=+|-+)[ \t]*$")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def _blocks(text: str) -> list[tuple[str, str]]:
    """(kind, text) blocks: "atomic" (a closed code fence or $$ formula, never cut), "heading" or
    "para" (lines up to a blank line). An unclosed fence or $$ is read as ordinary text."""
    lines = text.split("\n")
    fences = [(i, m.group(1)) for i, ln in enumerate(lines) if (m := _FENCE.match(ln))]
    fence_at = [i for i, _ in fences]
    dollars = [i for i, ln in enumerate(lines) if ln.count("$$") % 2]
    out: list[tuple[str, str]] = []
    para: list[str] = []

    def end_para():
        if para:
            out.append(("para", "\n".join(para)))
            para.clear()

    i = 0
    while i < len(lines):
        line, close = lines[i], None
        if (m := _FENCE.match(line)) is not None:
            mark = m.group(1)
            # the closing fence: same character, at least as long, nothing after it
            for j, other in fences[bisect.bisect_right(fence_at, i):]:
                if other[0] == mark[0] and len(other) >= len(mark) and not lines[j].strip().strip(mark[0]):
                    close = j
                    break
        elif line.count("$$") % 2:
            k = bisect.bisect_right(dollars, i)
            close = dollars[k] if k < len(dollars) else None
        if close is not None:
            end_para()
            out.append(("atomic", "\n".join(lines[i:close + 1])))
            i = close + 1
            continue
        if not line.strip():
            end_para()
        elif _HEADING.match(line):
            end_para()
            out.append(("heading", line))
        elif para and len(para) == 1 and _SETEXT.match(line):  # "Title\n=====": the paragraph was a heading
            out.append(("heading", para.pop() + "\n" + line))
        else:
            para.append(line)
        i += 1
    end_para()
    return out


def _split_long(text: str, max_chars: int, first: int) -> list[str]:
    """A paragraph over max_chars, cut at sentence ends, else at a space, else (one giant token)
    anywhere; the pieces are refilled up to max_chars (the first up to `first`, leaving room for
    the heading before it)."""
    units: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        while len(sentence) > max_chars:
            cut = max(sentence.rfind(" ", 0, max_chars + 1), sentence.rfind("\n", 0, max_chars + 1))
            cut = cut if cut > 0 else max_chars
            units.append(sentence[:cut])
            sentence = sentence[cut:].lstrip()
        units.append(sentence)
    pieces: list[str] = []
    for unit in filter(str.strip, units):
        if pieces and len(pieces[-1]) + 1 + len(unit) <= (first if len(pieces) == 1 else max_chars):
            pieces[-1] += " " + unit
        else:
            pieces.append(unit)
    return pieces


def _pack(blocks: list[tuple[str, str]], max_chars: int, min_chars: int) -> list[str]:
    """Blocks into passages joined by blank lines: a new passage when the next block would pass
    max_chars, or at a heading once the current one has min_chars."""
    passages: list[list[tuple[str, str]]] = [[]]
    size = 0  # length of the current passage as joined
    for kind, block in blocks:
        cur = passages[-1]
        if cur and (size + 2 + len(block) > max_chars or (kind == "heading" and size >= min_chars)):
            # a heading stays with what it introduces, when the two fit together
            carry = len(cur) > 1 and cur[-1][0] == "heading" and len(cur[-1][1]) + 2 + len(block) <= max_chars
            passages.append([cur.pop()] if carry else [])
            size = len(passages[-1][0][1]) if carry else 0
        passages[-1].append((kind, block))
        size += len(block) + (2 if len(passages[-1]) > 1 else 0)
    return ["\n\n".join(b for _, b in p) for p in passages if p]


def segment_passages(text: str, max_chars: int = 2000, min_chars: int = 200) -> list[str]:
    """Passages of at most `max_chars` (a code block or formula longer than that stays whole, in a
    passage of its own), cut at paragraph and heading boundaries, each heading kept with what
    follows it; a passage under `min_chars` joins a neighbour when they fit together. Every
    non-whitespace character of `text` is in exactly one passage, in order; only whitespace between
    blocks changes (blocks are joined by one blank line)."""
    if not isinstance(text, str):
        raise TypeError(f"segment_passages needs a str, got {type(text).__name__}")
    if not 0 <= min_chars <= max_chars or max_chars < 1:
        raise ValueError(f"need 0 <= min_chars <= max_chars and max_chars >= 1, got {min_chars}, {max_chars}")
    blocks: list[tuple[str, str]] = []
    for kind, block in _blocks(text.replace("\r\n", "\n")):
        if kind != "atomic" and len(block) > max_chars:  # a heading line that long is a paragraph
            room = max_chars - 2 - len(blocks[-1][1]) if blocks and blocks[-1][0] == "heading" else max_chars
            blocks += [("para", piece) for piece in _split_long(block, max_chars, max(room, max_chars // 2))]
        else:
            blocks.append((kind, block))
    out: list[str] = []
    for p in _pack(blocks, max_chars, min_chars):
        if out and min(len(out[-1]), len(p)) < min_chars and len(out[-1]) + 2 + len(p) <= max_chars:
            out[-1] += "\n\n" + p
        else:
            out.append(p)
    return out


# Cheap surface cues, English first, with the common German / French / Spanish equivalents.
_NUMBER = re.compile(r"\d+(?:[.,:/-]\d+)*%?")
_YEAR_OR_DATE = re.compile(  # years 1000-2099 and month names ("may" left out: mostly the verb)
    r"\b(?:1\d{3}|20\d\d)\b|\b(?:january|february|march|april|june|july|august|september|october|november|"
    r"december|(?:jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec)\.|januar|februar|märz|mai|juni|juli|oktober|"
    r"dezember|janvier|février|mars|avril|juin|juillet|août|septembre|octobre|novembre|décembre|enero|"
    r"febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|octubre|noviembre|diciembre)(?!\w)", re.I)
_DEFINITION = re.compile(
    r"\b(?:is|are|was|were) (?:a|an|the) (?:\w+ ){0,3}(?:of|that|which|for|used)\b|\bis defined as\b|"
    r"\brefers? to\b|\b(?:also )?known as\b|\bis called\b|\bconsists? of\b|\bdenotes?\b|"
    r"\b(?:ist|sind) (?:ein|eine|der|die|das)\b|\bbezeichnet\b|\bversteht man\b|"
    r"\b(?:est|sont) (?:un|une|le|la|les)\b|\bdésigne\b|\bse définit\b|"
    r"\b(?:es|son) (?:un|una|el|la|los|las)\b|\bse define\b|\bse denomina\b", re.I)
_CONNECTIVE = re.compile(
    r"\b(?:therefore|thus|hence|because|since|consequently|so that|it follows|which means|implies|"
    r"suppose|assume|let|if|then|otherwise|we (?:get|obtain|have|conclude|see)|as a result|"
    r"daher|deshalb|folglich|weil|angenommen|somit|daraus folgt|wenn|dann|"
    r"donc|parce que|ainsi|par conséquent|supposons|si|alors|"
    r"por lo tanto|porque|entonces|supongamos|así que|por consiguiente|si)\b|[⇒∴→]|=>", re.I)
_EQUATION = re.compile(r"[^=<>!\s]\s*(?:=|≤|≥|≠|≈)\s*[^=\s]|\\(?:frac|sum|int|sqrt|cdot|times)\b|\$[^$\n]+\$")
_STEP = re.compile(r"^[ \t]*(?:step \d+|schritt \d+|étape \d+|paso \d+|\d+[.)][ \t]|[-*•][ \t]|"
                   r"first(?:ly)?\b|second(?:ly)?\b|next\b|finally\b|zuerst\b|dann\b|schließlich\b|"
                   r"d'abord\b|ensuite\b|enfin\b|primero\b|luego\b|finalmente\b)", re.I | re.M)
_SENTENCE = re.compile(r"[.!?。！？]+(?:\s|$)|\n\s*\n")


def _sat(x: float, half: float) -> float:
    """0 at 0, 1/2 at `half`, towards 1 beyond: densities map to [0, 1) without a hard cap."""
    return x / (x + half) if x > 0 else 0.0


def passage_scores(passages) -> list[dict]:
    """Heuristic {"factual", "reasoning" in [0, 1], "words"} for each passage.

    factual: density of numbers (per word), of years / month names and of capitalised words not
    starting a sentence (a stand-in for named entities), and definitional phrases per sentence
    ("X is a .. of", "refers to", "known as", German/French/Spanish "ist ein", "désigne", "se define").
    reasoning: causal and deductive connectives per sentence ("therefore", "because", "hence", "it
    follows", "suppose", "if .. then" and the German/French/Spanish equivalents), equations and
    LaTeX per sentence, and stepwise structure (numbered / "Step n" / "First .. Finally" lines).
    Limits: surface cues only; no truth, no coherence. Capitalised nouns make German look more
    factual; scripts without case or spaces get no entity or per-word signal; the word lists cover
    four languages. Calibrate against annotations, or replace with a trained classifier.
    """
    out = []
    for text in passages:
        if not isinstance(text, str) or not text.strip():
            out.append({"factual": 0.0, "reasoning": 0.0, "words": 0})
            continue
        toks = text.split()
        n_words = len(toks)
        n_sent = max(1, len(_SENTENCE.findall(text)))
        lines = max(1, sum(1 for ln in text.split("\n") if ln.strip()))
        numbers = len(_NUMBER.findall(text)) + len(_YEAR_OR_DATE.findall(text))
        entities = sum(1 for prev, tok in zip(toks, toks[1:])
                       if tok[:1].isupper() and not prev.endswith((".", "!", "?", ":")) and tok[1:2].islower())
        factual = (0.4 * _sat(numbers / n_words, 0.05) + 0.35 * _sat(entities / n_words, 0.06)
                   + 0.25 * _sat(len(_DEFINITION.findall(text)) / n_sent, 0.25))
        reasoning = (0.5 * _sat(len(_CONNECTIVE.findall(text)) / n_sent, 0.5)
                     + 0.3 * _sat(len(_EQUATION.findall(text)) / n_sent, 0.5)
                     + 0.2 * _sat(len(_STEP.findall(text)) / lines, 0.3))
        out.append({"factual": round(min(1.0, factual), 4), "reasoning": round(min(1.0, reasoning), 4),
                    "words": n_words})
    return out
