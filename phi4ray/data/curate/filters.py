"""Corruption filters: Gopher-style heuristics plus compression and encoding checks, split into
score and keep (as NeMo Curator splits its filters).

`corruption_scores(text)` measures a fixed set of float columns (`SCORE_COLUMNS`); the keep
decision, `corruption_reason(scores, config, content_type, lang)`, compares them with
`CorruptionConfig` and names the first rule that fails ("" keeps the document). Scores are stored
with the data, so a threshold can be changed and the decision replayed without rescoring.

Rules and defaults follow the MassiveText paper (Gopher, Rae et al. 2021, appendix A1) and
datatrove's `GopherQualityFilter` / `GopherRepetitionFilter`, with these deliberate differences:
- words are whitespace-separated tokens (`str.split`), not a language tokenizer (datatrove runs
  spaCy): linear and the same for every language; punctuation stays on its word, which adds a
  little to the mean word length; "symbol" words (no letter or digit) do not count as words;
- duplicate lines/paragraphs are compared after stripping surrounding whitespace, and blank lines
  are not lines; character fractions are over the characters of the lines/paragraphs/words
  themselves, so every `*_frac` column is in [0, 1];
- the top n-gram fraction counts only n-grams that occur at least twice (a single occurrence is
  not repetition; datatrove reports the first n-gram when nothing repeats);
- duplicate n-gram characters: every word covered by a repeat of an earlier n-gram, each word
  counted once however many repeats cover it (the paper's "not counting overlaps twice").
Added beyond Gopher: zlib compression ratio (too compressible = repeated junk, too incompressible
= random data, base64, binary), U+FFFD and control-character fractions, character bounds.

Code (`content_type="code"`) skips the prose-only rules: stop words, alphabetic words, mean word
length, '#' and ellipsis ratios and bullet/ellipsis lines ('#' is a comment, '-'/'*' start
lines); it keeps the length, encoding, compression and repetition rules, with looser bounds for
repeated lines and n-grams (closing braces, `return None`, `self.assertEqual(` repeat in any
healthy source file).
Languages written without spaces between words (`no_space_langs`) skip the word-count and
word-length rules, which whitespace words cannot measure there.

Speed: one pass of C-level string methods (split, set, count, zlib) plus numpy over word ids;
n-gram repetition uses 64-bit rolling hashes and one sort per n over the positions whose shorter
n-gram already repeats, so prose costs about one sort of its words; past `NGRAM_WORD_LIMIT` words
(twice Gopher's word cap) only a prefix is read for them. The one regex over the whole text is a
single character class (linear).
"""
from __future__ import annotations

import math
import operator
import re
import string
import zlib
from dataclasses import dataclass, fields

import numpy as np

from phi4ray.run.errors import ConfigError

CONTENT_TYPES = ("text", "html", "code")
TOP_NGRAMS = (2, 3, 4)
DUP_NGRAMS = (5, 6, 7, 8, 9, 10)

SCORE_COLUMNS: tuple[str, ...] = (
    "n_chars", "n_words", "mean_word_len", "hash_word_ratio", "ellipsis_word_ratio",
    "bullet_line_frac", "ellipsis_line_frac", "alpha_word_frac", "stop_words",
    "dup_line_frac", "dup_line_char_frac", "dup_para_frac", "dup_para_char_frac",
    *(f"top_{n}gram_char_frac" for n in TOP_NGRAMS),
    *(f"dup_{n}gram_char_frac" for n in DUP_NGRAMS),
    "compression_ratio", "replacement_char_frac", "control_char_frac",
)

# Gopher's stop words: a document of English prose has at least two of them.
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "-", "*", "●", "◦", "▪", "‣", "–")
ELLIPSES = ("...", "…")
# stripped from word ends before the stop-word lookup ("the," is "the")
_WORD_EDGE = string.punctuation + "“”‘’«»„…—–·•"
# C0 controls other than \t \n \v \f \r, DEL and C1 controls: never in real text (form feed is a
# page break in old plain-text files and stdlib sources, so it is allowed)
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")
# C-level callables for map(): no Python frame per line or word
_starts_bullet = operator.methodcaller("startswith", BULLETS)
_ends_ellipsis = operator.methodcaller("endswith", ELLIPSES)
_strip_edge = operator.methodcaller("strip", _WORD_EDGE)
NGRAM_WORD_LIMIT = 200_000


@dataclass(frozen=True)
class CorruptionConfig:
    """Keep thresholds; None turns a rule off. Defaults: Gopher (MassiveText table A1) where it
    has one, else measured on stdlib docstrings, licences, man pages and stdlib code."""
    min_chars: int | None = 100
    max_chars: int | None = 10_000_000
    max_replacement_char_frac: float | None = 0.001  # U+FFFD from bytes the reader had to replace
    max_control_char_frac: float | None = 0.01
    # zlib level-1 compressed/raw UTF-8 bytes. Measured here on documents of 1 KB and more:
    # prose and man pages (en, de, ja, ru) 0.16-0.61, stdlib code 0.19-0.57; a pasted repeat
    # 0.01-0.05; base64 0.76-0.79, random bytes as Latin-1 0.81-0.84 (hex dumps, 0.56-0.59, and
    # random letters, ~0.63, overlap real short text: the word rules catch those). Below 1 KB the
    # fixed cost of the deflate stream dominates (real snippets reach 1.2), so the rule waits for
    # `compression_min_chars`.
    min_compression_ratio: float | None = 0.10
    max_compression_ratio: float | None = 0.70
    compression_min_chars: int = 1024
    min_words: int | None = 50
    max_words: int | None = 100_000
    max_dup_para_frac: float | None = 0.30
    max_dup_para_char_frac: float | None = 0.20
    max_dup_line_frac: float | None = 0.30
    max_dup_line_char_frac: float | None = 0.20
    max_top_ngram_char_frac: tuple[float, ...] = (0.20, 0.18, 0.16)  # n = 2, 3, 4
    max_dup_ngram_char_frac: tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)  # n = 5..10
    # Healthy code repeats short lines ("}", "pass", "return None") and idioms
    # ("self.assertEqual(", "raise TypeError(") by nature: at Gopher's prose bounds 10% of the
    # stdlib fails. These bounds (p99 of stdlib code ~ 0.4 / 0.3 / 0.28 .. 0.18) still reject
    # pasted blocks and generated tables.
    max_code_dup_line_frac: float | None = 0.45
    max_code_dup_line_char_frac: float | None = 0.35
    max_code_dup_ngram_char_frac: tuple[float, ...] = (0.30, 0.28, 0.26, 0.24, 0.22, 0.20)
    min_mean_word_len: float | None = 3.0
    max_mean_word_len: float | None = 10.0
    max_hash_word_ratio: float | None = 0.1
    max_ellipsis_word_ratio: float | None = 0.1
    max_bullet_line_frac: float | None = 0.9
    max_ellipsis_line_frac: float | None = 0.3
    min_alpha_word_frac: float | None = 0.8
    min_stop_words: int | None = 2
    stop_word_langs: tuple[str, ...] = ("en",)
    no_space_langs: tuple[str, ...] = ("ja", "zh", "th", "lo", "km", "my", "bo", "wuu", "yue")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("max_top_ngram_char_frac", "max_dup_ngram_char_frac", "max_code_dup_ngram_char_frac"):
                want = len(TOP_NGRAMS) if f.name.startswith("max_top") else len(DUP_NGRAMS)
                if (not isinstance(value, tuple) or len(value) != want
                        or not all(v is None or _is_frac(v) for v in value)):
                    raise ConfigError(f"corruption.{f.name} must be a tuple of {want} fractions in "
                                      f"[0, 1] (or None), got {value!r}")
            elif f.name in ("stop_word_langs", "no_space_langs"):
                if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"corruption.{f.name} must be a tuple of language codes, got {value!r}")
            elif value is None and f.name != "compression_min_chars":
                continue
            elif "frac" in f.name or "ratio" in f.name:
                if not _is_frac(value):
                    raise ConfigError(f"corruption.{f.name} must be a fraction in [0, 1] or None, got {value!r}")
            elif not _is_number(value) or value < 0:
                raise ConfigError(f"corruption.{f.name} must be a non-negative number, got {value!r}")
        for lo, hi in (("min_chars", "max_chars"), ("min_words", "max_words"),
                       ("min_mean_word_len", "max_mean_word_len"),
                       ("min_compression_ratio", "max_compression_ratio")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ConfigError(f"corruption.{lo}={a!r} is above corruption.{hi}={b!r}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_frac(v) -> bool:
    return _is_number(v) and 0 <= v <= 1


# ---- scoring -------------------------------------------------------------------------------------

_U64 = np.uint64
_ROLL = _U64(0x9E3779B97F4A7C15)  # odd multiplier of the rolling n-gram hash


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: word ids (small, consecutive) -> well-spread 64-bit values, so the
    rolling sum over an n-gram behaves like a random hash (collisions ~2^-64 per pair)."""
    z = x.astype(_U64) + _ROLL
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def _repeat_groups(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For hashes h: how often each one occurs (per position) and whether a position is the
    first occurrence of its value. One unstable sort; firsts by the minimum index per group."""
    order = np.argsort(h)
    sh = h[order]
    start = np.ones(len(h), dtype=bool)
    start[1:] = sh[1:] != sh[:-1]
    starts = np.flatnonzero(start)
    sizes = np.diff(np.append(starts, len(h)))
    counts = np.empty(len(h), dtype=np.int64)
    counts[order] = np.repeat(sizes, sizes)
    first = np.zeros(len(h), dtype=bool)
    first[np.minimum.reduceat(order, starts)] = True
    return counts, first


def _ngram_scores(ids: np.ndarray, lens: np.ndarray, out: dict) -> None:
    """Fill the top-n and duplicate n-gram fractions from word ids and word lengths."""
    n_words = len(ids)
    total = float(lens.sum()) or 1.0
    csum = np.concatenate(([0], np.cumsum(lens)))
    x = _mix64(ids)
    # positions whose (n-1)-gram occurs at least twice: only there can the n-gram repeat
    pos = np.arange(max(n_words - 1, 0))
    h = x[:-1] * _ROLL + x[1:] if n_words > 1 else np.zeros(0, _U64)
    for n in range(2, DUP_NGRAMS[-1] + 1):
        if len(pos) == 0:
            break
        counts, first = _repeat_groups(h)
        if n in TOP_NGRAMS:
            top = counts.max()
            if top >= 2:
                at = pos[counts == top]
                chars = (csum[at + n] - csum[at]).max()
                out[f"top_{n}gram_char_frac"] = min(1.0, top * chars / total)
        if n in DUP_NGRAMS:
            dup = pos[(counts >= 2) & ~first]
            if len(dup):
                # words i..i+n-1 of each repeat: +1 at its start, -1 after its end, running sum
                cover = np.bincount(dup, minlength=n_words + 1) - np.bincount(dup + n, minlength=n_words + 1)
                covered = np.cumsum(cover[:-1]) > 0
                out[f"dup_{n}gram_char_frac"] = float(lens[covered].sum()) / total
        keep = (counts >= 2) & (pos + n < n_words)
        pos = pos[keep]
        h = h[keep] * _ROLL + x[pos + n]


_ASCII_ALPHA = np.array([chr(i).isalpha() for i in range(128)])
_ASCII_ALNUM = np.array([chr(i).isalnum() for i in range(128)])


def _word_classes(uniq: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per unique word: has a letter, has a letter or digit. Vectorised over the code points of
    the words joined by spaces (never inside a whitespace-split word); str.isalpha/isalnum run
    only once per distinct non-ASCII character."""
    codes = np.frombuffer(" ".join(uniq).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    word = np.cumsum(codes == 32)  # a separator counts towards the next word: neither class
    alpha = np.zeros(len(codes), dtype=bool)
    alnum = np.zeros(len(codes), dtype=bool)
    low = codes < 128
    alpha[low] = _ASCII_ALPHA[codes[low]]
    alnum[low] = _ASCII_ALNUM[codes[low]]
    high = np.flatnonzero(~low)
    if len(high):
        cps, inverse = np.unique(codes[high], return_inverse=True)
        chars = [chr(c) for c in cps.tolist()]
        alpha[high] = np.array([c.isalpha() for c in chars])[inverse]
        alnum[high] = np.array([c.isalnum() for c in chars])[inverse]
    n = len(uniq)
    return np.bincount(word[alpha], minlength=n) > 0, np.bincount(word[alnum], minlength=n) > 0


def _dup_fracs(items: list[str]) -> tuple[float, float]:
    """(repeated items / items, characters in repeats / characters), first occurrences kept."""
    if not items:
        return 0.0, 0.0
    uniq = set(items)
    chars = sum(map(len, items))
    dup_chars = chars - sum(map(len, uniq))
    return (len(items) - len(uniq)) / len(items), (dup_chars / chars if chars else 0.0)


def corruption_scores(text: str, content_type: str = "text") -> dict[str, float]:
    """All `SCORE_COLUMNS` for one document, as finite floats (0.0 where undefined, e.g. empty).
    `content_type` only selects which rules `corruption_reason` applies; the scores are the same
    measurements for every type, so columns stay comparable across sources."""
    if content_type not in CONTENT_TYPES:
        raise ValueError(f"content_type must be one of {CONTENT_TYPES}, got {content_type!r}")
    out = dict.fromkeys(SCORE_COLUMNS, 0.0)
    if not isinstance(text, str) or not text:
        return out
    n_chars = len(text)
    out["n_chars"] = float(n_chars)
    out["replacement_char_frac"] = text.count("\ufffd") / n_chars
    out["control_char_frac"] = len(_CONTROL.findall(text)) / n_chars
    raw = text.encode("utf-8", "surrogatepass")  # lone surrogates from JSON escapes must not raise
    out["compression_ratio"] = len(zlib.compress(raw, 1)) / len(raw)

    stripped = list(map(str.strip, text.split("\n")))
    lines = [s for s in stripped if s]
    if lines:
        out["dup_line_frac"], out["dup_line_char_frac"] = _dup_fracs(lines)
        out["bullet_line_frac"] = sum(map(_starts_bullet, lines)) / len(lines)
        out["ellipsis_line_frac"] = sum(map(_ends_ellipsis, lines)) / len(lines)
        # stripped blank lines are empty, so every paragraph break is now a "\n\n"
        paras = [p.strip("\n") for p in "\n".join(stripped).split("\n\n")]
        out["dup_para_frac"], out["dup_para_char_frac"] = _dup_fracs([p for p in paras if p])

    words = text.split()
    if not words:
        return out
    uniq = list(dict.fromkeys(words))
    index = dict(zip(uniq, range(len(uniq))))
    ids = np.fromiter(map(index.__getitem__, words), dtype=np.int64, count=len(words))
    lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    # Past Gopher's 100k-word cap a document fails `max_words` whatever its repetition, so the
    # n-gram statistics read a bounded prefix: a 10 MB document costs what a 1 MB one does.
    _ngram_scores(ids[:NGRAM_WORD_LIMIT], lens[:NGRAM_WORD_LIMIT], out)
    has_alpha, has_alnum = _word_classes(uniq)
    real = has_alnum[ids]  # words with a letter or digit; pure symbols ("-", "|", "...") are not words
    n_real = int(real.sum())
    out["n_words"] = float(n_real)
    if n_real:
        out["mean_word_len"] = float(lens[real].mean())
    out["alpha_word_frac"] = float(has_alpha[ids].mean())
    out["hash_word_ratio"] = text.count("#") / len(words)
    out["ellipsis_word_ratio"] = (text.count("...") + text.count("…")) / len(words)
    out["stop_words"] = float(len(STOP_WORDS.intersection(map(_strip_edge, map(str.lower, uniq)))))
    return out


# ---- keep decision -------------------------------------------------------------------------------

# (score, "<" or ">", config field, which documents: "all", "prose" or "spaced" (word-count
# rules that need spaces between words)). Order = the order reasons are reported in: cheap,
# unambiguous damage first.
_RULES: tuple[tuple[str, str, str, str], ...] = (
    ("n_chars", "<", "min_chars", "all"),
    ("n_chars", ">", "max_chars", "all"),
    ("replacement_char_frac", ">", "max_replacement_char_frac", "all"),
    ("control_char_frac", ">", "max_control_char_frac", "all"),
    ("compression_ratio", "<", "min_compression_ratio", "compressible"),
    ("compression_ratio", ">", "max_compression_ratio", "compressible"),
    ("n_words", "<", "min_words", "spaced"),
    ("n_words", ">", "max_words", "spaced"),
    ("dup_para_frac", ">", "max_dup_para_frac", "all"),
    ("dup_para_char_frac", ">", "max_dup_para_char_frac", "all"),
    ("dup_line_frac", ">", "max_dup_line_frac", "text"),
    ("dup_line_char_frac", ">", "max_dup_line_char_frac", "text"),
    ("dup_line_frac", ">", "max_code_dup_line_frac", "code"),
    ("dup_line_char_frac", ">", "max_code_dup_line_char_frac", "code"),
    *((f"top_{n}gram_char_frac", ">", f"max_top_ngram_char_frac[{i}]", "all") for i, n in enumerate(TOP_NGRAMS)),
    *((f"dup_{n}gram_char_frac", ">", f"max_dup_ngram_char_frac[{i}]", "text") for i, n in enumerate(DUP_NGRAMS)),
    *((f"dup_{n}gram_char_frac", ">", f"max_code_dup_ngram_char_frac[{i}]", "code")
      for i, n in enumerate(DUP_NGRAMS)),
    ("mean_word_len", "<", "min_mean_word_len", "spaced_prose"),
    ("mean_word_len", ">", "max_mean_word_len", "spaced_prose"),
    ("hash_word_ratio", ">", "max_hash_word_ratio", "prose"),
    ("ellipsis_word_ratio", ">", "max_ellipsis_word_ratio", "prose"),
    ("bullet_line_frac", ">", "max_bullet_line_frac", "prose"),
    ("ellipsis_line_frac", ">", "max_ellipsis_line_frac", "prose"),
    ("alpha_word_frac", "<", "min_alpha_word_frac", "prose"),
    ("stop_words", "<", "min_stop_words", "stop"),
)
_INDEXED = re.compile(r"(\w+)\[(\d)\]")


def _threshold(config: CorruptionConfig, name: str):
    m = _INDEXED.fullmatch(name)
    return getattr(config, m[1])[int(m[2])] if m else getattr(config, name)


def corruption_reason(scores: dict, config: CorruptionConfig | None = None, content_type: str = "text",
                      lang: str = "") -> str:
    """"" to keep the document, else the first failing rule as "<score><op><threshold>", e.g.
    "dup_line_frac>0.3". `lang` (ISO code from language ID, "" if unknown) switches on the
    stop-word rule (English only) and off the word-count rules for unspaced scripts."""
    config = config or CorruptionConfig()
    if content_type not in CONTENT_TYPES:
        raise ValueError(f"content_type must be one of {CONTENT_TYPES}, got {content_type!r}")
    code = content_type == "code"
    spaced = lang not in config.no_space_langs
    applies = {
        "all": True, "text": not code, "code": code, "prose": not code, "spaced": spaced,
        "spaced_prose": spaced and not code, "stop": not code and lang in config.stop_word_langs,
        "compressible": scores.get("n_chars", 0.0) >= config.compression_min_chars,
    }
    for score, op, field, which in _RULES:
        limit = _threshold(config, field)
        if limit is None or not applies[which]:
            continue
        value = scores[score]
        if (value < limit) if op == "<" else (value > limit):
            return f"{score}{op}{limit}"
    return ""


def corruption_scores_batch(texts: list[str], content_types: list[str] | None = None) -> dict[str, np.ndarray]:
    """Column form for `map_batches`: {score: float64 array of len(texts)}."""
    content_types = content_types or ["text"] * len(texts)
    cols = {c: np.zeros(len(texts)) for c in SCORE_COLUMNS}
    for i, (text, ct) in enumerate(zip(texts, content_types)):
        for c, v in corruption_scores(text, ct).items():
            cols[c][i] = v
    return cols


def corruption_reasons(columns: dict, config: CorruptionConfig | None = None,
                       content_types: list[str] | None = None, langs: list[str] | None = None) -> list[str]:
    """`corruption_reason` for each row of score columns (as from `corruption_scores_batch`)."""
    n = len(columns[SCORE_COLUMNS[0]])
    content_types = content_types or ["text"] * n
    langs = langs or [""] * n
    return [corruption_reason({c: float(columns[c][i]) for c in SCORE_COLUMNS}, config, content_types[i], langs[i])
            for i in range(n)]
