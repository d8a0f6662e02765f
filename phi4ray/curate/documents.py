"""The per-document half of curation: one input file's rows through every filter that needs no
other document (HTML extraction, corruption, language, decontamination), plus the keys the
cross-document half (exact and MinHash dedup, in actors/curate.py) groups on.

Filters run in that order and a document stops at the first that drops it: its `status` says
kept / dropped / quarantined and `reason` names the filter and rule ("corruption:dup_line_frac>0.3",
"language:ru", "contaminated:arith"). Every score computed is kept as a column, so a user can see
why a document went, and every row read comes out once: read = kept + dropped + quarantined.
"""
from __future__ import annotations

import pyarrow as pa

from phi4ray.curate.config import CurateConfig
from phi4ray.curate.decontam import EvalIndex
from phi4ray.curate.dedup import exact_key
from phi4ray.curate.filters import SCORE_COLUMNS, corruption_reason, corruption_scores
from phi4ray.curate.html import extract
from phi4ray.curate.langid import LanguageID
from phi4ray.curate.minhash import band_keys, signatures

KEPT, DROPPED, QUARANTINED = "kept", "dropped", "quarantined"
READ_COLUMNS = ("doc_id", "source", "uri", "record", "url", "format", "content_type", "language")
SCHEMA = pa.schema(
    [(c, pa.string()) for c in READ_COLUMNS]
    + [("text", pa.large_string()), ("status", pa.string()), ("reason", pa.string()),
       ("lang", pa.string()), ("lang_score", pa.float32())]
    + [(c, pa.float32()) for c in SCORE_COLUMNS]
    + [("html_code_blocks", pa.int32()), ("html_tables", pa.int32()), ("html_formulas", pa.int32()),
       ("html_posts", pa.int32()), ("contaminated_item", pa.string()), ("exact_key", pa.string()),
       ("bands", pa.list_(pa.binary()))])


class DocumentFilters:
    """Holds what is expensive to load (the lid.176 model, the evaluation n-gram index) once."""

    def __init__(self, config: CurateConfig, eval_files: list[str]):
        self.config = config
        self.langid = LanguageID()
        self.index = EvalIndex.from_files(eval_files, config.decontam) if eval_files else None

    def _drop(self, row: dict, reason: str) -> None:
        row["status"], row["reason"] = DROPPED, reason

    def __call__(self, rows: list[dict]) -> pa.Table:
        c = self.config
        out = []
        for r in rows:
            row = {k: r.get(k, "") for k in READ_COLUMNS}
            row.update(text=r.get("text") or "", status=KEPT, reason="", lang="", lang_score=0.0,
                       contaminated_item="", exact_key="", bands=[])
            row.update({s: 0.0 for s in SCORE_COLUMNS})
            row.update(html_code_blocks=0, html_tables=0, html_formulas=0, html_posts=0)
            if r.get("quarantine"):
                row["status"], row["reason"] = QUARANTINED, r["quarantine"]
            elif row["content_type"] == "html":
                ex = extract(row["text"], row["url"], c.extract)
                row.update(text=ex.text, html_code_blocks=ex.n_code, html_tables=ex.n_tables,
                           html_formulas=ex.n_formulas, html_posts=ex.n_posts)
                if ex.reason:
                    self._drop(row, f"html:{ex.reason}")
            out.append(row)
        live = [row for row in out if row["status"] == KEPT]
        kind = lambda row: "code" if row["content_type"] == "code" else "text"  # noqa: E731
        for row in live:  # corruption: scores always, the rule that fails (if any) as the reason
            row.update(corruption_scores(row["text"], kind(row)))
        prose = [row for row in live if kind(row) == "text"]
        for row, (lang, score) in zip(prose, self.langid.predict([row["text"] for row in prose])):
            row["lang"], row["lang_score"] = lang, score
        for row in live:
            why = corruption_reason({s: row[s] for s in SCORE_COLUMNS}, c.filters, kind(row), row["lang"])
            if why:
                self._drop(row, f"corruption:{why}")
            elif kind(row) == "text" and (row["lang_score"] < c.min_lang_score
                                          or (c.languages and row["lang"] not in c.languages)):
                self._drop(row, f"language:{row['lang'] or 'unknown'}")
        live = [row for row in live if row["status"] == KEPT]
        if self.index is not None:
            for row, hit in zip(live, self.index.check_batch([row["text"] for row in live])):
                if hit is not None:
                    row["contaminated_item"] = f"{hit.suite}/{hit.item_id}"
                    self._drop(row, f"contaminated:{hit.suite}")
        live = [row for row in live if row["status"] == KEPT]
        sigs = signatures([row["text"] for row in live], c.minhash) if live else []
        for row, keys in zip(live, band_keys(sigs, c.minhash) if live else []):
            row["exact_key"], row["bands"] = exact_key(row["text"]), keys
        return pa.Table.from_pylist(out, schema=SCHEMA)
