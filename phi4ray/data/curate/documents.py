"""The per-document half of curation: one input file's rows through the enabled document filters
(`curate.filters`, in that order; the protocol is in phi4ray.data.curate.registry), plus the keys the
cross-document half (exact and MinHash dedup) groups on.

A document stops at the first filter that drops it: its `status` says kept / dropped /
quarantined and `reason` names the filter and rule ("corruption:dup_line_frac>0.3",
"language:ru", "contaminated:arith"). Every score computed is kept as a column, so a user can see
why a document went, and every row read comes out once: read = kept + dropped + quarantined.

Built-in filters, registered here:
- html: main-text extraction of HTML rows (rewrites `text`; counts code blocks, tables, formulas,
  posts); first, so the filters after it read text, not markup;
- corruption: the Gopher-style rules of phi4ray.data.curate.filters (`curate.corruption`);
- language: lid.176 on prose (`curate.languages`, `curate.min_lang_score`);
- decontam: n-gram overlap with the evaluation sets (`curate.decontam`).
"""
from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from phi4ray.data.curate.decontam import EvalIndex
from phi4ray.data.curate.dedup import exact_key
from phi4ray.data.curate.filters import SCORE_COLUMNS, corruption_reason, corruption_scores
from phi4ray.data.curate.html import extract
from phi4ray.data.curate.langid import LanguageID
from phi4ray.data.curate.minhash import band_keys, signatures
from phi4ray.data.curate.registry import DocumentFilter, default_value, filter_class, filter_columns, register
from phi4ray.run.errors import ConfigError

KEPT, DROPPED, QUARANTINED = "kept", "dropped", "quarantined"
READ_COLUMNS = ("doc_id", "source", "uri", "record", "url", "format", "content_type", "language")
HEAD_COLUMNS = ([(c, pa.string()) for c in READ_COLUMNS]
                + [("text", pa.large_string()), ("status", pa.string()), ("reason", pa.string())])
DEDUP_COLUMNS = [("exact_key", pa.string()), ("bands", pa.list_(pa.binary()))]


def document_schema(filters: Sequence[str]) -> pa.Schema:
    """What a shard file holds: the read columns, status and reason, each enabled filter's
    columns in filter order, then the dedup keys."""
    fixed = {name for name, _ in HEAD_COLUMNS + DEDUP_COLUMNS}
    cols = filter_columns(filters)
    clash = sorted(fixed.intersection(name for name, _ in cols))
    if clash:
        raise ConfigError(f"curate.filters: column(s) {clash} are the stage's own, not a filter's")
    return pa.schema(HEAD_COLUMNS + cols + DEDUP_COLUMNS)


def content_kind(row: dict) -> str:
    """"code" or "text": extracted HTML is text to every rule."""
    return "code" if row["content_type"] == "code" else "text"


# --- the built-in filters ---------------------------------------------------------------------------
@register
class HtmlFilter(DocumentFilter):
    name = "html"
    columns = {"html_code_blocks": pa.int32(), "html_tables": pa.int32(), "html_formulas": pa.int32(),
               "html_posts": pa.int32()}

    def applies(self, row: dict) -> bool:
        return row["content_type"] == "html"

    def score(self, rows: list[dict]) -> None:
        self.failed = {}  # id(row) -> why extraction failed, read by decide() on the same rows
        for row in rows:
            ex = extract(row["text"], row["url"], self.config.extract)
            row.update(text=ex.text, html_code_blocks=ex.n_code, html_tables=ex.n_tables,
                       html_formulas=ex.n_formulas, html_posts=ex.n_posts)
            self.failed[id(row)] = ex.reason

    def decide(self, row: dict) -> str:
        return self.failed.get(id(row), "")


@register
class CorruptionFilter(DocumentFilter):
    name = "corruption"
    columns = {c: pa.float32() for c in SCORE_COLUMNS}
    requires = ("language",)  # stop words count for English only; unspaced scripts skip word rules

    def score(self, rows: list[dict]) -> None:
        for row in rows:
            row.update(corruption_scores(row["text"], content_kind(row)))

    def decide(self, row: dict) -> str:
        return corruption_reason({s: row[s] for s in SCORE_COLUMNS}, self.config.corruption,
                                 content_kind(row), row.get("lang", ""))


@register
class LanguageFilter(DocumentFilter):
    name = "language"
    columns = {"lang": pa.string(), "lang_score": pa.float32()}

    def __init__(self, config, eval_files: Sequence[str] = ()):
        super().__init__(config, eval_files)
        self.langid = LanguageID()  # the lid.176 model, loaded once per holder of the filters

    def applies(self, row: dict) -> bool:
        return content_kind(row) == "text"  # code is exempt

    def score(self, rows: list[dict]) -> None:
        for row, (lang, score) in zip(rows, self.langid.predict([row["text"] for row in rows])):
            row["lang"], row["lang_score"] = lang, score

    def decide(self, row: dict) -> str:
        c = self.config
        if row["lang_score"] < c.min_lang_score or (c.languages and row["lang"] not in c.languages):
            return row["lang"] or "unknown"
        return ""


@register
class DecontamFilter(DocumentFilter):
    name = "decontam"
    reason_prefix = "contaminated"
    columns = {"contaminated_item": pa.string()}

    def __init__(self, config, eval_files: Sequence[str] = ()):
        super().__init__(config, eval_files)
        self.index = EvalIndex.from_files(list(eval_files), config.decontam) if eval_files else None

    def score(self, rows: list[dict]) -> None:
        self.suite = {}  # id(row) -> the suite it overlaps
        if self.index is None:
            return
        for row, hit in zip(rows, self.index.check_batch([row["text"] for row in rows])):
            if hit is not None:
                row["contaminated_item"] = f"{hit.suite}/{hit.item_id}"
                self.suite[id(row)] = hit.suite

    def decide(self, row: dict) -> str:
        return self.suite.get(id(row), "")


# --- the runner ------------------------------------------------------------------------------------
class DocumentFilters:
    """The enabled filters, built once (the lid.176 model and the evaluation n-gram index are
    expensive to load), applied to the rows of one input file at a time."""

    def __init__(self, config, eval_files: Sequence[str] = ()):
        self.config = config
        self.filters = [filter_class(name)(config, eval_files) for name in config.filters]
        self.schema = document_schema(config.filters)
        self.defaults = {f.name: default_value(f.type) for f in self.schema}

    def _new_row(self, r: dict) -> dict:
        row = dict(self.defaults)
        row.update({k: r.get(k, "") for k in READ_COLUMNS})
        row.update(text=r.get("text") or "", status=KEPT, reason="")
        if r.get("quarantine"):
            row["status"], row["reason"] = QUARANTINED, r["quarantine"]
        return row

    def __call__(self, rows: list[dict]) -> pa.Table:
        out = [self._new_row(r) for r in rows]
        scored: set[str] = set()
        enabled = {f.name: f for f in self.filters}

        def score(f: DocumentFilter) -> None:
            if f.name not in scored:
                scored.add(f.name)
                f.score([row for row in out if row["status"] == KEPT and f.applies(row)])

        for f in self.filters:
            for dep in f.requires:
                if dep in enabled:
                    score(enabled[dep])
            score(f)
            for row in out:
                if row["status"] == KEPT and f.applies(row):
                    why = f.decide(row)
                    if why:
                        row["status"], row["reason"] = DROPPED, f"{f.prefix}:{why}"
        live = [row for row in out if row["status"] == KEPT]
        if live:
            mh = self.config.minhash
            for row, keys in zip(live, band_keys(signatures([row["text"] for row in live], mh), mh)):
                row["exact_key"], row["bands"] = exact_key(row["text"]), keys
        return pa.Table.from_pylist(out, schema=self.schema)
