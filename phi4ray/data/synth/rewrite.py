r"""Rewrite and augment: a seed passage becomes an exercise, a discussion, a reasoning task.

One row per (seed, kind), in seed order then kind order. A rewrite is kept (status "ok") only if
it is non-empty, long enough, not a copy of its seed, and has the parts its kind promises: an
exercise a solution, a reasoning task a final answer in \boxed{} (which becomes `answer`, so the
task can be checked later). The copy check is the share of the output's word n-grams (default 5)
that occur in the seed: a rewrite restates facts in new words, while a near-verbatim copy teaches
nothing the organic seed does not already.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa

from phi4ray.data.curate.filters import CorruptionConfig, corruption_reason, corruption_scores
from phi4ray.data.synth.llm import CallConfig, Engine, Request, Sampling, call_all, make_row, require, seed_value
from phi4ray.data.synth.templates import load_template
from phi4ray.verify.oracles import last_boxed

KINDS = {"exercise": "rewrite_exercise", "discussion": "rewrite_discussion", "reasoning": "rewrite_reasoning"}

SCHEMA = pa.schema([("seed_id", pa.string()), ("kind", pa.string()), ("template_id", pa.string()),
                    ("status", pa.string()), ("text", pa.string()), ("answer", pa.string()),
                    ("copy_overlap", pa.float64())])


@dataclass(frozen=True)
class RewriteConfig:
    kinds: tuple[str, ...] = ("exercise", "discussion", "reasoning")
    sampling: Sampling = field(default_factory=lambda: Sampling(max_tokens=1024, temperature=0.7))
    max_copy_overlap: float = 0.5  # most of the output's n-grams that may occur in the seed
    copy_ngram: int = 5
    min_words: int = 30
    # the organic corpus's corruption filters, minus the rules fair rewrites can break (short
    # outputs, math-heavy exercises with few alphabetic words, no English stop words): what is
    # left catches degenerate teacher output (word salad, repetition loops, broken bytes)
    corruption: CorruptionConfig = field(default_factory=lambda: CorruptionConfig(
        min_words=None, min_alpha_word_frac=None, min_stop_words=None))

    def __post_init__(self) -> None:
        require("RewriteConfig", self, {
            "kinds": (bool(self.kinds) and set(self.kinds) <= set(KINDS) and len(set(self.kinds)) == len(self.kinds),
                      f"a non-empty tuple of distinct kinds from {sorted(KINDS)}"),
            "max_copy_overlap": (0 < self.max_copy_overlap <= 1, "in (0, 1]"),
            "copy_ngram": (self.copy_ngram >= 1, ">= 1"),
            "min_words": (self.min_words >= 1, ">= 1"),
        })


_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower()) if isinstance(text, str) else []


def ngram_overlap(text: str, source: str, n: int = 5) -> float:
    """Share of `text`'s word n-grams that occur in `source` (n shrinks to the text's length)."""
    tw, sw = words(text), words(source)
    n = min(n, len(tw))
    if n == 0:
        return 0.0
    grams = [tuple(tw[i:i + n]) for i in range(len(tw) - n + 1)]
    seen = {tuple(sw[i:i + n]) for i in range(len(sw) - n + 1)}
    return sum(g in seen for g in grams) / len(grams)


_SOLUTION = re.compile(r"^[ \t*#_]*solution[ \t*_]*:", re.I | re.M)


def check_rewrite(kind: str, text: str, seed: str, config: RewriteConfig) -> tuple[str, str | None, float]:
    """(status, answer, copy_overlap) of one rewrite: "ok" or why it is dropped."""
    overlap = ngram_overlap(text, seed, config.copy_ngram)
    answer = last_boxed(text) if kind == "reasoning" else None
    if not text.strip():
        return "empty", answer, overlap
    if len(words(text)) < config.min_words:
        return "too_short", answer, overlap
    corrupt = corruption_reason(corruption_scores(text), config.corruption)
    if corrupt:
        return f"corrupt:{corrupt}", answer, overlap
    if overlap > config.max_copy_overlap:
        return "copy_of_seed", answer, overlap
    if kind == "exercise":
        m = _SOLUTION.search(text)
        if m is None or not text[m.end():].strip():
            return "no_solution", answer, overlap
    if kind == "reasoning" and not (answer or "").strip():
        return "no_final_answer", None, overlap
    return "ok", answer, overlap


async def rewrite_step(engine: Engine, seeds: list[dict], config: RewriteConfig = RewriteConfig(),
                       call: CallConfig = CallConfig()) -> list[dict]:
    """Seeds {"seed_id", "text"} -> rows of SCHEMA, len(seeds) * len(config.kinds) of them."""
    templates = {k: load_template(KINDS[k]) for k in config.kinds}
    jobs, rows = [], []
    for seed in seeds:
        sid, text, bad = seed_value(seed, "text")
        for kind in config.kinds:
            row = make_row(SCHEMA, seed_id=sid, kind=kind, template_id=templates[kind].template_id, status=bad)
            rows.append(row)
            if bad is None:
                jobs.append((row, text, Request.of(templates[kind].render(passage=text), config.sampling,
                                                       guide=templates[kind].guide)))
    outcomes = await call_all(engine, [r for _, _, r in jobs], **call.kwargs())
    for (row, text, _), out in zip(jobs, outcomes):
        if not out.ok:
            row["status"] = out.error
            continue
        row["text"] = out.text.strip()
        row["status"], row["answer"], row["copy_overlap"] = check_rewrite(row["kind"], row["text"], text, config)
    return rows
