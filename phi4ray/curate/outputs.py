"""The cross-document half's verdicts and the stage's outputs.

`finalize_batch` applies the dedup verdicts and the quality classifier to one batch of shard rows
(the Ray job maps it over every row); `place_outputs` moves the partitioned write into
RUN/curated/<source> (kept), RUN/curate/dropped and RUN/curate/quarantined, the curated folder
swapped in whole; `funnel` counts what went where and fails unless read = kept + dropped +
quarantined.
"""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from phi4ray.curate.classifier import QualityClassifier
from phi4ray.curate.documents import DROPPED, KEPT, QUARANTINED

PARTITION_COLS = ["_status", "_source"]


def finalize_batch(batch: pa.Table, exact: set[str], fuzzy: set[str], classifier: QualityClassifier | None,
                   min_score: float) -> pa.Table:
    """Every row with its final status and reason ("dedup:exact", "dedup:minhash", "quality"),
    its quality score, without the band keys, and with copies of status and source to partition by."""
    status = batch.column("status").to_pylist()
    reason = batch.column("reason").to_pylist()
    ids = batch.column("doc_id").to_pylist()
    for i, d in enumerate(ids):
        if status[i] == KEPT and d in exact:
            status[i], reason[i] = DROPPED, "dedup:exact"
        elif status[i] == KEPT and d in fuzzy:
            status[i], reason[i] = DROPPED, "dedup:minhash"
    score = np.zeros(len(ids), dtype=np.float32)
    live = [i for i, s in enumerate(status) if s == KEPT]
    if classifier is not None and live:
        texts = batch.column("text").to_pylist()
        score[live] = classifier.score([texts[i] for i in live])
        for i in live:
            if score[i] < min_score:
                status[i], reason[i] = DROPPED, "quality"
    out = batch.drop_columns(["status", "reason", "bands"])
    return (out.append_column("status", pa.array(status, pa.string()))
            .append_column("reason", pa.array(reason, pa.string()))
            .append_column("quality_score", pa.array(score, pa.float32()))
            # partition keys are copies: Ray's partitioned write drops its key columns from the
            # files, and an output file should still say what it is without its directory name
            .append_column("_status", pa.array(status, pa.string()))
            .append_column("_source", batch.column("source")))


def swap_in(tmp: Path, dest: Path) -> None:
    """Replace folder `dest` by `tmp`; a crash leaves either of them whole (or dest.old)."""
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def place_outputs(written: Path, run_dir: Path) -> None:
    """`written`: a write partitioned by PARTITION_COLS. Kept rows become RUN/curated/<source>,
    the others RUN/curate/dropped and RUN/curate/quarantined; `written` is removed."""
    curated = run_dir / "curated.tmp"
    shutil.rmtree(curated, ignore_errors=True)
    curated.mkdir()
    for part in sorted((written / f"_status={KEPT}").glob("_source=*")):
        part.rename(curated / part.name.split("=", 1)[1])
    for status, name in ((DROPPED, "dropped"), (QUARANTINED, "quarantined")):
        dest = run_dir / "curate" / name
        shutil.rmtree(dest, ignore_errors=True)
        if (written / f"_status={status}").is_dir():
            (written / f"_status={status}").rename(dest)
    swap_in(curated, run_dir / "curated")
    shutil.rmtree(written, ignore_errors=True)


def funnel(files: list[str], exact: set[str], fuzzy: set[str], run_dir: Path) -> dict:
    """Counts from the shard files (per-document verdicts), the dedup sets and the placed outputs;
    raises unless read = kept + dropped + quarantined."""
    read, reasons, kept_by_source = 0, Counter(), Counter()
    for f in files:
        for r in pq.read_table(f, columns=["doc_id", "status", "reason", "source"]).to_pylist():
            read += 1
            if r["status"] != KEPT:
                reasons[f"{r['status']}:{r['reason']}"] += 1
    for d in (run_dir / "curated").iterdir():
        kept_by_source[d.name] = sum(pq.ParquetFile(f).metadata.num_rows for f in d.rglob("*.parquet"))
    quality = sum(pq.read_table(f, columns=["reason"]).column("reason").to_pylist().count("quality")
                  for f in (run_dir / "curate" / "dropped").rglob("*.parquet"))
    reasons.update({"dropped:dedup:exact": len(exact), "dropped:dedup:minhash": len(fuzzy), "dropped:quality": quality})
    kept = sum(kept_by_source.values())
    dropped = sum(v for k, v in reasons.items() if k.startswith("dropped:"))
    quarantined = sum(v for k, v in reasons.items() if k.startswith("quarantined:"))
    if read != kept + dropped + quarantined:
        raise RuntimeError(f"curate: counts do not add up: read {read} != kept {kept} + dropped {dropped} "
                           f"+ quarantined {quarantined}")
    by_filter = Counter()
    for k, v in reasons.items():
        if k.startswith("dropped:"):
            by_filter[k.split(":")[1]] += v
    return {"read": read, "kept": kept, "dropped": dropped, "quarantined": quarantined,
            "kept_by_source": dict(sorted(kept_by_source.items())), "dropped_by_filter": dict(sorted(by_filter.items())),
            "reasons": dict(sorted((k, v) for k, v in reasons.items() if v))}
