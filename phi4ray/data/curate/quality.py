"""The quality step of curation: annotate a stable sample of the surviving prose, turn the
annotations into labels, train the classifier (phi4ray.data.curate.classifier) that the final pass
applies to every document. Plain Python over the sampled texts; the sample is drawn by the
stage's Ray Data job with `sample_rank` / `top_ranked` (the k documents first by a hash of their
id: a stable sample that does not follow file order), and only the fleet annotator needs Ray,
through the fleet it is handed.
"""
from __future__ import annotations

import json
import statistics
import zlib
from pathlib import Path

import pyarrow as pa

from phi4ray.data.curate.annotate import annotate, labels_from_annotations
from phi4ray.data.curate.classifier import train_classifier

RANK_ORDER = [("rank", "ascending"), ("doc_id", "ascending")]


def sample_rank(doc_id: str) -> int:
    """Where a document stands in the sample order: crc32 of its id (ties by id)."""
    return zlib.crc32(doc_id.encode())


def top_ranked(batch: pa.Table, k: int) -> pa.Table:
    """The first k rows of `batch` (a doc_id column) in the sample order, with their `rank`. The
    first k of a dataset are the first k of the union of its blocks' first k: a per-block
    reduction before a global sort of what is left."""
    rank = pa.array([sample_rank(d) for d in batch.column("doc_id").to_pylist()], pa.int64())
    return batch.append_column("rank", rank).sort_by(RANK_ORDER).slice(0, k)


def train_quality(sample: list[tuple[str, str]], cfg, out: Path, fleet=None) -> tuple[str, dict]:
    """Annotate the sample ((doc id, text) of at most curate.quality.annotate_docs surviving prose
    documents, in sample order), train the classifier, save it with its annotations under `out`.
    Returns (classifier path or "" when it could not be trained, metrics). `fleet`: the run's, for
    annotator=fleet."""
    q = cfg.curate.quality
    ids, texts = [d for d, _ in sample], [t for _, t in sample]
    notes = annotate(texts, q, fleet, cfg.serve.api_key_env)
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
    clf, m = train_classifier(texts, labels, q.classifier)
    path = clf.save(out / "classifier.npz")
    return str(path), {**metrics, **m}
