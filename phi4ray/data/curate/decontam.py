"""Decontamination: drop training documents that contain text of an evaluation item.

Phi-4's report decontaminates with a hybrid n-gram algorithm using 13-gram and 7-gram features.
Here: an evaluation item (each of its text fields on its own) with at least `n` = 13 words
contributes its word 13-grams; one too short for that, but with at least `min_item_words`, its
`short_n` = 7-grams; shorter ones contribute nothing (their n-grams are everyday phrases). A
training document is contaminated when it contains any indexed n-gram. Words come from one
normalisation on both sides (NFKC, casefold, punctuation and underscores dropped, whitespace
collapsed; each CJK character is a word, as those scripts put no spaces between words), so case,
punctuation and spacing changes do not hide a copy.

The index keeps no text: every n-gram is a 64-bit hash (xxh3 of each word, combined over the n
words by a polynomial mod 2^64), held in a sorted numpy array with a parallel array naming the item,
so a Ray actor holds MMLU-sized suites in a few MB and a lookup is a binary search. A document is
checked in time linear in its length; `check_batch` hashes a whole batch in a few numpy passes.
With 64-bit hashes a false match needs about 2^64 / (index size x corpus n-grams) luck: a few
wrongly dropped documents at web scale, never a missed copy.

Evaluation sets are files the user controls, so reading them fails loudly (EvalSetError naming
file:line); checking documents never raises.
"""
from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from itertools import chain
from pathlib import PurePosixPath
from typing import Iterable, Mapping

import fsspec
import numpy as np
import xxhash

from phi4ray.run.errors import ConfigError

__all__ = ["DecontamConfig", "EvalIndex", "Contamination", "EvalSetError", "words", "normalize",
           "hash_words", "ngram_hashes", "batch_ngram_hashes"]

# Hiragana, katakana, CJK ideographs (+ extension A and compatibility): one word per character.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd, so n-gram hashes are a bijection of the last word's
_COMPRESSION = {".gz", ".bz2", ".xz", ".zst", ".zstd", ".lz4"}
_JSONL = {".jsonl", ".ndjson"}


class EvalSetError(ValueError):
    """An evaluation-set file that cannot be read as configured; the message names file[:line]."""


def words(text: str) -> list[str]:
    """The words decontamination compares: NFKC, casefolded, punctuation and whitespace dropped."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def normalize(text: str) -> str:
    return " ".join(words(text))


def hash_words(tokens: list[str]) -> np.ndarray:
    """64-bit hash of each token (uint64). xxh3, not hash(): it must agree across processes."""
    return np.fromiter(map(xxhash.xxh3_64_intdigest, map(str.encode, tokens)), dtype=np.uint64,
                       count=len(tokens))


def ngram_hashes(h: np.ndarray, n: int) -> np.ndarray:
    """Hash of every run of n consecutive hashes in `h` (len(h) - n + 1 of them, or none)."""
    m = len(h) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    out = h[:m].copy()
    for k in range(1, n):
        out = out * _MULT + h[k:k + m]  # uint64 arithmetic wraps: the polynomial is mod 2^64
    return out


def batch_ngram_hashes(h: np.ndarray, ends: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n-grams of documents laid end to end in `h` (document d ends at ends[d]), hashed in one pass;
    runs that cross from one document into the next are dropped. -> (hashes, start, document)."""
    grams = ngram_hashes(h, n)
    pos = np.arange(len(grams))
    doc = np.repeat(np.arange(len(ends)), np.diff(ends, prepend=0))[:len(grams)]
    keep = pos + n <= ends[doc]
    return grams[keep], pos[keep], doc[keep]


@dataclass(frozen=True)
class DecontamConfig:
    n: int = 13
    short_n: int = 7
    # a field with fewer words is not indexed: a 5-word answer is a phrase anyone might write
    min_item_words: int = 7
    # JSONL: each of these string fields is matched on its own ...
    text_fields: tuple[str, ...] = ("question", "prompt", "problem", "input", "text")
    # ... and each of these too, a list (multiple-choice options) joined into one text
    answer_fields: tuple[str, ...] = ("choices", "answers", "options", "answer", "solution")
    id_fields: tuple[str, ...] = ("id", "idx", "task_id", "question_id", "doc_id")  # else the line number
    text_mode: str = "lines"  # plain-text eval files: "lines" (one item a line) or "file" (one item)

    def __post_init__(self) -> None:
        for name in ("n", "short_n", "min_item_words"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"decontam.{name} must be a positive integer, got {value!r}")
        if self.short_n >= self.n:
            raise ConfigError(f"decontam.short_n={self.short_n} must be < decontam.n={self.n}")
        if self.min_item_words < self.short_n:
            raise ConfigError(f"decontam.min_item_words={self.min_item_words} must be >= "
                              f"decontam.short_n={self.short_n} (a shorter item has no short n-gram)")
        for name in ("text_fields", "answer_fields", "id_fields"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(f, str) and f for f in value):
                raise ConfigError(f"decontam.{name} must be a tuple of field names, got {value!r}")
        if not self.text_fields and not self.answer_fields:
            raise ConfigError("decontam.text_fields and decontam.answer_fields are both empty")
        if self.text_mode not in ("lines", "file"):
            raise ConfigError(f"decontam.text_mode must be 'lines' or 'file', got {self.text_mode!r}")


@dataclass(frozen=True)
class Contamination:
    suite: str
    item_id: str
    ngram: str    # the first matching n-gram of that item, as normalised document words
    matches: int  # matching n-grams in the document, all items together
    items: int    # distinct evaluation items it matched; suite/item_id name the one matched most


# --- reading evaluation files --------------------------------------------------------------------
def _suffixes(path: str) -> list[str]:
    sfx = [s.lower() for s in PurePosixPath(path).suffixes]
    return sfx[:-1] if sfx and sfx[-1] in _COMPRESSION else sfx


def suite_name(path: str) -> str:
    """The file stem, past a compression suffix: "data/mmlu.jsonl.gz" -> "mmlu"."""
    p = PurePosixPath(str(path))
    return PurePosixPath(p.stem).stem if p.suffix.lower() in _COMPRESSION else p.stem


def _as_text(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list):  # choices: strings, or {"text": .., "label": ..} records
        parts = [_as_text(v) if not isinstance(v, dict) else " ".join(filter(None, map(_as_text, v.values())))
                 for v in value]
        return " ".join(p for p in parts if p) or None
    return None


def _jsonl_items(path: str, lines: Iterable[str], config: DecontamConfig):
    fields = config.text_fields + config.answer_fields
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalSetError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise EvalSetError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        texts = [t for t in (_as_text(row.get(f)) for f in fields) if t and t.strip()]
        if not texts:
            raise EvalSetError(f"{path}:{lineno}: none of the fields {list(fields)} holds text "
                               "(set DecontamConfig.text_fields / answer_fields)")
        item_id = next((str(row[f]) for f in config.id_fields if row.get(f) is not None), str(lineno))
        yield item_id, texts


def _read_items(path: str, config: DecontamConfig) -> list[tuple[str, list[str]]]:
    sfx = _suffixes(path)
    if sfx and sfx[-1] == ".json":
        raise EvalSetError(f"{path}: a .json file is one JSON document; write the eval set as JSONL "
                           "(.jsonl, one object a line)")
    try:
        with fsspec.open(path, "rt", encoding="utf-8", compression="infer") as f:
            if sfx and sfx[-1] in _JSONL:
                items = list(_jsonl_items(path, f, config))
            elif config.text_mode == "file":
                body = f.read()
                items = [("file", [body])] if body.strip() else []
            else:
                items = [(str(i), [line]) for i, line in enumerate(f, 1) if line.strip()]
    except FileNotFoundError:
        raise EvalSetError(f"{path}: eval file not found") from None
    except OSError as e:
        raise EvalSetError(f"{path}: cannot read the eval file ({e})") from None
    except UnicodeDecodeError as e:
        raise EvalSetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not items:
        raise EvalSetError(f"{path}: eval file has no items (it is empty or blank)")
    return items


# --- the index -----------------------------------------------------------------------------------
class EvalIndex:
    """Hashed n-grams of evaluation items -> (suite, item id). Small and picklable."""

    def __init__(self, config: DecontamConfig, items: list[tuple[str, str]], long_hashes: np.ndarray,
                 long_owner: np.ndarray, short_hashes: np.ndarray, short_owner: np.ndarray, stats: dict):
        self.config = config
        self.items = items  # owner index -> (suite, item id)
        self.long_hashes, self.long_owner = long_hashes, long_owner
        self.short_hashes, self.short_owner = short_hashes, short_owner
        self.stats = stats  # suite -> {"items", "indexed", "too_short"}

    @classmethod
    def from_files(cls, paths, config: DecontamConfig | None = None) -> "EvalIndex":
        """Index evaluation files: a list of paths (suite = file stem) or a {suite: path} mapping.

        `.jsonl` / `.ndjson` (optionally compressed) are read as JSON lines; anything else as plain
        text, one item a line or, with text_mode="file", the whole file. Any fsspec URL works.
        """
        config = config or DecontamConfig()
        if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__"):
            paths = [paths]
        if isinstance(paths, Mapping):
            named = [(str(s), str(p)) for s, p in paths.items()]
        else:
            named = [(suite_name(str(p)), str(p)) for p in paths]
            seen: dict[str, str] = {}
            for suite, p in named:
                if suite in seen:
                    raise EvalSetError(f"{seen[suite]} and {p} both name suite {suite!r}; "
                                       "pass a {suite: path} mapping instead")
                seen[suite] = p
        if not named:
            raise EvalSetError("no evaluation files given")
        return cls.from_items(((suite, item_id, texts) for suite, p in named
                               for item_id, texts in _read_items(p, config)), config)

    @classmethod
    def from_items(cls, items: Iterable[tuple[str, str, list[str] | str]],
                   config: DecontamConfig | None = None) -> "EvalIndex":
        """Index (suite, item id, text or list of field texts) triples directly."""
        config = config or DecontamConfig()
        table: list[tuple[str, str]] = []
        parts: dict[int, tuple[list, list]] = {config.n: ([], []), config.short_n: ([], [])}
        stats: dict[str, dict] = {}
        for suite, item_id, texts in items:
            owner = len(table)
            table.append((str(suite), str(item_id)))
            st = stats.setdefault(str(suite), {"items": 0, "indexed": 0, "too_short": 0})
            st["items"] += 1
            indexed = False
            for text in ([texts] if isinstance(texts, str) else texts):
                toks = words(text)
                size = config.n if len(toks) >= config.n else config.short_n
                if len(toks) < config.min_item_words:
                    continue
                hashes = ngram_hashes(hash_words(toks), size)
                parts[size][0].append(hashes)
                parts[size][1].append(np.full(len(hashes), owner, dtype=np.int32))
                indexed = True
            st["indexed" if indexed else "too_short"] += 1
        arrays = []
        for size in (config.n, config.short_n):
            hashes, owners = parts[size]
            if not hashes:
                arrays += [np.empty(0, np.uint64), np.empty(0, np.int32)]
                continue
            h, o = np.concatenate(hashes), np.concatenate(owners)
            uniq, first = np.unique(h, return_index=True)  # an n-gram shared by items names the first
            arrays += [uniq, o[first]]
        return cls(config, table, *arrays, stats)

    def __len__(self) -> int:
        return len(self.long_hashes) + len(self.short_hashes)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.long_hashes, self.long_owner, self.short_hashes, self.short_owner))

    def check(self, text) -> Contamination | None:
        return self.check_batch([text])[0]

    def check_batch(self, texts) -> list[Contamination | None]:
        """One result per text: None when clean (or not a string: there is nothing to match)."""
        toks = [words(t) if isinstance(t, str) else [] for t in texts]
        lens = np.fromiter(map(len, toks), dtype=np.int64, count=len(toks))
        ends = np.cumsum(lens)
        wh = hash_words(list(chain.from_iterable(toks)))
        hits: list[Counter] = [Counter() for _ in toks]
        first: list[dict] = [{} for _ in toks]
        for size, table, owner in ((self.config.n, self.long_hashes, self.long_owner),
                                   (self.config.short_n, self.short_hashes, self.short_owner)):
            if not len(table):
                continue
            grams, pos, doc = batch_ngram_hashes(wh, ends, size)
            slot = np.minimum(np.searchsorted(table, grams), len(table) - 1)
            for j in np.flatnonzero(table[slot] == grams).tolist():
                d, o = int(doc[j]), int(owner[slot[j]])
                hits[d][o] += 1
                if o not in first[d]:
                    start = int(pos[j] - (ends[d] - lens[d]))
                    first[d][o] = " ".join(toks[d][start:start + size])
        out: list[Contamination | None] = []
        for h, f in zip(hits, first):
            if not h:
                out.append(None)
                continue
            best = max(h, key=lambda o: (h[o], -o))  # most matches; the earliest-indexed item on ties
            suite, item_id = self.items[best]
            out.append(Contamination(suite, item_id, f[best], sum(h.values()), len(h)))
        return out
