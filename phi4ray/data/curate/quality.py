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


def labeller(quality) -> str:
    """Who labelled the classifier's training data (`quality`: a QualityConfig), as the records
    name it: an annotation set is only as good as its judge."""
    if quality.annotator == "endpoint":
        return f"{quality.name} at {quality.url}"
    if quality.annotator == "fleet":
        return quality.model
    return "passage heuristics, no LLM judge"


def balanced_accuracy(metrics: dict) -> float | None:
    """The mean of the held-out accuracy of each label class (`metrics`: train_classifier's), None
    unless every class is held out. 0.5 for a classifier that answers one class whatever the text,
    whichever the class and however the classes are balanced."""
    per_class = metrics["heldout_class_accuracy"]
    if not per_class or len(per_class) < len(metrics["class_counts"]):
        return None
    return sum(per_class.values()) / len(per_class)


def quality_line(metrics: dict, dropped: int) -> str:
    """The line a person reads about the quality step: `metrics` from `train_quality`, `dropped`
    the documents dropped below its threshold."""
    who = f"{metrics['annotator']} labels ({metrics['judge']})"
    if "skipped" in metrics:
        return f"curate: quality: {who}: {metrics['skipped']}"
    acc = metrics.get("heldout_accuracy")
    line = (f"curate: quality classifier trained on {metrics['parsed']} {who}, {metrics['positives']} keep; "
            f"held-out accuracy {'n/a' if acc is None else f'{acc:.2f}'} on {metrics['heldout_size']}; ")
    line += metrics.get("not_dropping") or f"{dropped} prose documents with p(keep) < {metrics['min_score']} dropped"
    if metrics["annotator"] == "heuristic":
        line += " (LLM labels: curate.quality.annotator=endpoint or fleet, see the README)"
    return line


def train_quality(sample: list[tuple[str, str]], cfg, out: Path, fleet=None) -> tuple[str, dict]:
    """Annotate the sample ((doc id, text) of at most curate.quality.annotate_docs surviving prose
    documents, in sample order), train the classifier, save it with its annotations under `out`.
    Returns (classifier path or "" when it could not be trained, metrics: who labelled the sample,
    the labels, the classifier's held-out accuracy against those labels and `min_score`, the
    threshold the final pass applies: curate.quality.min_score, or 0 ("not_dropping" says why)
    when the classifier does not tell the labels apart on held-out documents: its scores then
    fall on one side of any threshold, which would drop all the prose or none of it for no
    reason in the texts). `fleet`: the run's, for annotator=fleet."""
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
    metrics = {"annotator": q.annotator, "judge": labeller(q), "annotated": len(ids),
               "parsed": sum(a is not None for a in notes), "label_threshold": threshold,
               "positives": sum(y == 1 for y in labels), "min_score": q.min_score}
    if len({y for y in labels if y is not None}) < 2:
        metrics["skipped"] = "annotations gave fewer than two classes: no classifier, nothing dropped for quality"
        return "", {**metrics, "min_score": 0.0}
    clf, m = train_classifier(texts, labels, q.classifier)
    metrics["balanced_accuracy"] = told_apart = balanced_accuracy(m)
    if q.min_score > 0 and not (told_apart is not None and told_apart > 0.5):
        metrics["min_score"] = 0.0
        why = "a class not held out" if told_apart is None else f"balanced accuracy {told_apart:.2f}"
        metrics["not_dropping"] = (f"nothing dropped for quality: the classifier does not tell keep from drop on "
                                   f"held-out documents ({why}); annotate more documents (curate.quality.annotate_docs)")
    # the saved classifier says what taught it, wherever the file goes
    clf.metrics = {**metrics, **m}
    path = clf.save(out / "classifier.npz")
    return str(path), clf.metrics
