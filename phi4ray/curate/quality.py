"""The quality step of curation: annotate a stable sample of the surviving prose, turn the
annotations into labels, train the classifier (phi4ray.curate.classifier) that the final pass
applies to every document. Plain Python over the shard files; only the fleet annotator needs Ray,
through the fleet it is handed.
"""
from __future__ import annotations

import json
import statistics
import zlib
from pathlib import Path

import pyarrow.parquet as pq

from phi4ray.curate.annotate import annotate, labels_from_annotations
from phi4ray.curate.classifier import train_classifier
from phi4ray.curate.documents import KEPT


def sample_ids(texts: dict[str, str], k: int) -> list[str]:
    """k doc ids picked by a hash of the id: a stable sample that does not follow file order."""
    return sorted(texts, key=lambda d: zlib.crc32(d.encode()))[:k]


def kept_prose(files: list[str], drop: set[str]) -> dict[str, str]:
    """{doc_id: text} of the kept non-code documents not in `drop` (the dedup losers)."""
    texts = {}
    for f in files:
        t = pq.read_table(f, columns=["doc_id", "text", "status", "content_type"]).to_pylist()
        texts.update({r["doc_id"]: r["text"] for r in t
                      if r["status"] == KEPT and r["content_type"] != "code" and r["doc_id"] not in drop})
    return texts


def train_quality(files: list[str], drop: set[str], cfg, out: Path, fleet=None) -> tuple[str, dict]:
    """Annotate a hash-picked sample of the surviving documents, train the classifier, save it
    with its annotations under `out`. Returns (classifier path or "" when it could not be trained,
    metrics). `fleet`: the run's, for annotator=fleet."""
    q = cfg.curate.quality
    texts = kept_prose(files, drop)  # only ids and texts of kept prose reach the driver
    ids = sample_ids(texts, q.annotate_docs)
    notes = annotate([texts[d] for d in ids], q, fleet, cfg.serve.api_key_env)
    # heuristic scores have no absolute meaning: split at their median so both classes exist
    threshold = q.label_threshold
    if q.annotator == "heuristic" and notes:
        threshold = statistics.median(a["educational_value"] for a in notes)
    labels = labels_from_annotations(notes, threshold)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "annotations.jsonl", "w") as f:
        for d, a, y in zip(ids, notes, labels):
            f.write(json.dumps({"doc_id": d, "annotation": a, "label": y}) + "\n")
    metrics = {"annotator": q.annotator, "annotated": len(ids), "parsed": sum(a is not None for a in notes),
               "label_threshold": threshold, "positives": sum(y == 1 for y in labels)}
    if len({y for y in labels if y is not None}) < 2:
        metrics["skipped"] = "annotations gave fewer than two classes: no classifier, nothing dropped for quality"
        return "", metrics
    clf, m = train_classifier([texts[d] for d in ids], labels, q.classifier)
    path = clf.save(out / "classifier.npz")
    return str(path), {**metrics, **m}
