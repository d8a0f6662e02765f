"""The cross-document half's verdicts and the stage's outputs.

`finalize_shard` applies the dedup verdicts (the shard's own, from the job's join) and the quality
classifier to one shard file, row group by row group, and writes its rows by final status into
<out>/<status>/<source>/<shard>.parquet: the same input gives the same files, row for row.
`place_outputs` moves those into RUN/curated/<source> (kept), RUN/curate/dropped and
RUN/curate/quarantined, the curated folder swapped in whole; `funnel` counts what went where and
fails unless read = kept + dropped + quarantined.
"""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from phi4ray.data.curate.classifier import QualityClassifier
from phi4ray.data.curate.documents import DROPPED, KEPT, QUARANTINED

STATUSES = (KEPT, DROPPED, QUARANTINED)
QUALITY = "quality"  # the reason of a document dropped below curate.quality.min_score


def finalize_batch(batch: pa.Table, dedup: dict[str, str], classifier: QualityClassifier | None,
                   min_score: float) -> pa.Table:
    """Every row with its final status and reason (`dedup`: doc id -> "dedup:exact" or
    "dedup:minhash" for the kept rows that lost to a duplicate; `QUALITY` for kept prose whose
    quality score is below `min_score`), its quality score, without the band keys. Code is scored
    but never dropped for quality: the classifier learnt from prose alone (the sample is prose),
    so its score says nothing about a source file."""
    status = batch.column("status").to_pylist()
    reason = batch.column("reason").to_pylist()
    ids = batch.column("doc_id").to_pylist()
    for i, d in enumerate(ids):
        if status[i] == KEPT and d in dedup:
            status[i], reason[i] = DROPPED, dedup[d]
    score = np.zeros(len(ids), dtype=np.float32)
    live = [i for i, s in enumerate(status) if s == KEPT]
    if classifier is not None and live:
        texts = batch.column("text").to_pylist()
        kinds = batch.column("content_type").to_pylist()
        score[live] = classifier.score([texts[i] for i in live])
        for i in live:
            if kinds[i] != "code" and score[i] < min_score:
                status[i], reason[i] = DROPPED, QUALITY
    out = batch.drop_columns(["status", "reason", "bands"])
    return (out.append_column("status", pa.array(status, pa.string()))
            .append_column("reason", pa.array(reason, pa.string()))
            .append_column("quality_score", pa.array(score, pa.float32())))


def finalize_shard(path: str | Path, shard: dict, dedup: dict[str, str], classifier: QualityClassifier | None,
                   min_score: float, out: Path) -> dict[str, int]:
    """`finalize_batch` over one shard file a row group at a time (a row group is one filter batch,
    phi4ray.data.curate.shards), each status's rows appended to out/<status>/<source>/<shard>.parquet.
    Returns counts: "kept", and "<status>:<reason>" for the others."""
    counts: Counter = Counter()
    writers: dict[str, pq.ParquetWriter] = {}
    try:
        f = pq.ParquetFile(path)
        for g in range(f.num_row_groups):
            table = finalize_batch(f.read_row_group(g), dedup, classifier, min_score)
            status = table.column("status")
            for st in STATUSES:
                rows = table.filter(pc.equal(status, st))
                if not rows.num_rows:
                    continue
                if st not in writers:
                    dest = out / st / shard["source"] / f"{shard['shard']}.parquet"
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    writers[st] = pq.ParquetWriter(dest, rows.schema)
                writers[st].write_table(rows)
                if st == KEPT:
                    counts[KEPT] += rows.num_rows
                else:
                    counts.update(f"{st}:{r}" for r in rows.column("reason").to_pylist())
    finally:
        for w in writers.values():
            w.close()
    return dict(counts)


def swap_in(tmp: Path, dest: Path) -> None:
    """Replace folder `dest` by `tmp`; a crash leaves either of them whole (or dest.old)."""
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def place_outputs(written: Path, run_dir: Path) -> None:
    """`written`: <status>/<source>/ folders (finalize_shard). Kept rows become RUN/curated/<source>,
    the others RUN/curate/dropped and RUN/curate/quarantined; `written` is removed."""
    curated = run_dir / "curated.tmp"
    shutil.rmtree(curated, ignore_errors=True)
    if (written / KEPT).is_dir():
        (written / KEPT).rename(curated)
    else:
        curated.mkdir()
    for status, name in ((DROPPED, "dropped"), (QUARANTINED, "quarantined")):
        dest = run_dir / "curate" / name
        shutil.rmtree(dest, ignore_errors=True)
        if (written / status).is_dir():
            (written / status).rename(dest)
    swap_in(curated, run_dir / "curated")
    shutil.rmtree(written, ignore_errors=True)


def _rows(folder: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in folder.rglob("*.parquet"))


def funnel(files: list[str], reasons: Counter, run_dir: Path) -> dict:
    """Counts from file footers (rows read, rows placed) and the final pass's `reasons`
    ("<status>:<reason>" -> rows; "kept" -> rows); no row is read. Raises unless read = kept +
    dropped + quarantined and the reasons account for every row placed."""
    read = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    kept_by_source = {d.name: _rows(d) for d in sorted((run_dir / "curated").iterdir()) if d.is_dir()}
    kept = sum(kept_by_source.values())
    dropped, quarantined = (_rows(run_dir / "curate" / name) for name in ("dropped", "quarantined"))
    if read != kept + dropped + quarantined:
        raise RuntimeError(f"curate: counts do not add up: read {read} != kept {kept} + dropped {dropped} "
                           f"+ quarantined {quarantined}")
    for name, placed in ((KEPT, kept), (DROPPED, dropped), (QUARANTINED, quarantined)):
        counted = sum(v for k, v in reasons.items() if k == name or k.startswith(f"{name}:"))
        if counted != placed:
            raise RuntimeError(f"curate: {placed} {name} rows were written but the final pass counted {counted}")
    by_filter = Counter()
    for k, v in reasons.items():
        if k.startswith(f"{DROPPED}:"):
            by_filter[k.split(":")[1]] += v
    return {"read": read, "kept": kept, "dropped": dropped, "quarantined": quarantined,
            "kept_by_source": kept_by_source, "dropped_by_filter": dict(sorted(by_filter.items())),
            "reasons": dict(sorted((k, v) for k, v in reasons.items() if k != KEPT and v))}
