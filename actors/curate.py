"""Stage `curate`: raw inputs -> RUN/curated/<source>/*.parquet on Ray Data.

Two halves (DESIGN.md stage 1):
1. Per input file (a shard), in `ShardFilter` actors that load lid.176 and the evaluation n-gram
   index once: read (phi4ray.curate.readers), extract HTML, corruption filters, language ID,
   decontamination, dedup keys (phi4ray.curate.documents). Each shard's rows, kept or not, are
   written atomically to RUN/curate/shards/<shard>.parquet: a rerun after a crash redoes only the
   shards without a file.
2. Across documents, over those files: exact dedup (group by normalised-text hash) and MinHash
   LSH dedup (explode band keys, group by key, star edges, union-find over the duplicate edges
   only), then the quality classifier (annotate a sample, train, score everything), then one
   write partitioned by status and source, swapped into place whole. Deterministic, so a rerun
   gives the same output as an uninterrupted run.
RUN/curate/stats.json is the funnel: read = kept + dropped (by filter) + quarantined (by reason).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from actors.ray_session import ray_session
from phi4ray import manifest
from phi4ray.curate.documents import DROPPED, KEPT, QUARANTINED

STAGE = "curate"


# --- planning -----------------------------------------------------------------------------------
def curate_inputs(run_dir: Path, cfg) -> list[tuple[str, str]]:
    c = cfg.curate
    if c.inputs:
        return c.parsed_inputs()
    from phi4ray.curate.builtin import write_builtin_raw

    raw = write_builtin_raw(run_dir / "raw" / str(c.builtin_docs), c.builtin_docs)
    return [tuple(e.split("=", 1)) for e in raw]


def plan_shards(run_dir: Path, cfg) -> tuple[list[dict], list[str]]:
    """Every input file as a shard {shard, source, uri, format, root}, sorted and with stable ids; and the
    files skipped as not a known format."""
    from phi4ray.curate.readers import ReaderConfig, list_inputs

    shards, skipped = [], []
    for source, path in curate_inputs(run_dir, cfg):
        found, unknown = list_inputs([path], ReaderConfig())
        skipped += unknown
        for inp in found:
            sid = hashlib.sha1(f"{source}\0{inp.uri}".encode()).hexdigest()[:16]
            shards.append({"shard": sid, "source": source, "uri": inp.uri, "format": inp.format, "root": inp.root})
    if not shards:
        raise FileNotFoundError(f"curate: no readable input files in {curate_inputs(run_dir, cfg)}")
    return sorted(shards, key=lambda s: s["shard"]), skipped


# --- half 1: per shard ----------------------------------------------------------------------------
class ShardFilter:
    """`map_batches` actor over shard descriptors; writes each shard's rows, returns its counts."""

    def __init__(self, config, eval_files: list[str], out_dir: str):
        from phi4ray.curate.documents import DocumentFilters
        from phi4ray.curate.readers import ReaderConfig

        self.filters = DocumentFilters(config, eval_files)
        self.reader = ReaderConfig()
        self.out = Path(out_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from phi4ray.curate.readers import Input, read_input

        done = []
        for shard in batch.to_pylist():
            inp = Input(shard["uri"], shard["format"], shard["root"])
            rows = list(read_input(inp, shard["source"], self.reader))
            table = self.filters(rows)
            tmp = self.out / f"{shard['shard']}.parquet.tmp"
            pq.write_table(table, tmp)
            tmp.replace(self.out / f"{shard['shard']}.parquet")  # atomic: a file here is a finished shard
            done.append({"shard": shard["shard"], "rows": table.num_rows})
        return pa.Table.from_pylist(done, schema=pa.schema([("shard", pa.string()), ("rows", pa.int64())]))


def filter_shards(shards: list[dict], cfg, eval_files: list[str], out_dir: Path) -> int:
    import ray

    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [s for s in shards if not (out_dir / f"{s['shard']}.parquet").is_file()]
    if not todo:
        return 0
    ds = ray.data.from_items(todo, override_num_blocks=len(todo))
    ds = ds.map_batches(ShardFilter, batch_size=1, batch_format="pyarrow",
                        concurrency=min(cfg.curate.shard_actors, len(todo)),
                        fn_constructor_kwargs={"config": cfg.curate, "eval_files": eval_files,
                                               "out_dir": str(out_dir)})
    return sum(r["rows"] for r in ds.take_all())


# --- half 2: across documents --------------------------------------------------------------------
def _exact_losers(group: pa.Table) -> pa.Table:
    ids = sorted(group.column("doc_id").to_pylist())
    return pa.table({"doc_id": pa.array(ids[1:], pa.string())})  # the smallest id stays


def _star_edges(group: pa.Table) -> pa.Table:
    from phi4ray.curate.dedup import group_edges

    edges = group_edges(sorted(set(group.column("doc_id").to_pylist())))
    return pa.table({"a": pa.array([a for a, _ in edges], pa.string()),
                     "b": pa.array([b for _, b in edges], pa.string())})


def dedup(files: list[str]) -> tuple[set[str], set[str], int]:
    """(exact duplicates, fuzzy duplicates, duplicate edges): ids to drop, each keeping the
    smallest doc id of its group. Only duplicates reach the driver, never texts or signatures."""
    import ray

    from phi4ray.curate.dedup import components, to_drop

    kept = ray.data.read_parquet(files, columns=["doc_id", "status", "exact_key", "bands"]).filter(
        expr=f"status == '{KEPT}'")
    # Ray's default of 200 shuffle partitions is per-partition overhead a small corpus pays in full
    # (~20 s per groupby on the tiny preset's 600 docs); one partition per ~10k docs, 2 to 200
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    parts = min(200, max(2, rows // 10_000))
    exact = {r["doc_id"] for r in kept.groupby("exact_key", num_partitions=parts).map_groups(
        _exact_losers, batch_format="pyarrow").take_all()}

    def explode(r):
        return [] if r["doc_id"] in exact else [{"band": k, "doc_id": r["doc_id"]} for k in r["bands"]]

    edges = kept.flat_map(explode).groupby("band", num_partitions=parts).map_groups(_star_edges, batch_format="pyarrow").take_all()
    fuzzy = to_drop(components((e["a"], e["b"]) for e in edges))
    return exact, fuzzy, len(edges)


def _sample(texts: dict[str, str], k: int) -> list[str]:
    """k doc ids picked by a hash of the id: a stable sample that does not follow file order."""
    return sorted(texts, key=lambda d: zlib.crc32(d.encode()))[:k]


class Finalize:
    """Applies the cross-document verdicts and the quality classifier to every row."""

    def __init__(self, exact: set[str], fuzzy: set[str], classifier: str, min_score: float):
        from phi4ray.curate.quality import QualityClassifier

        self.exact, self.fuzzy, self.min_score = exact, fuzzy, min_score
        self.classifier = QualityClassifier.load(classifier) if classifier else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        import numpy as np

        status = batch.column("status").to_pylist()
        reason = batch.column("reason").to_pylist()
        ids = batch.column("doc_id").to_pylist()
        for i, d in enumerate(ids):
            if status[i] == KEPT and d in self.exact:
                status[i], reason[i] = DROPPED, "dedup:exact"
            elif status[i] == KEPT and d in self.fuzzy:
                status[i], reason[i] = DROPPED, "dedup:minhash"
        score = np.zeros(len(ids), dtype=np.float32)
        live = [i for i, s in enumerate(status) if s == KEPT]
        if self.classifier is not None and live:
            texts = batch.column("text").to_pylist()
            score[live] = self.classifier.score([texts[i] for i in live])
            for i in live:
                if score[i] < self.min_score:
                    status[i], reason[i] = DROPPED, "quality"
        out = batch.drop_columns(["status", "reason", "bands"])
        return (out.append_column("status", pa.array(status, pa.string()))
                .append_column("reason", pa.array(reason, pa.string()))
                .append_column("quality_score", pa.array(score, pa.float32()))
                # partition keys are copies: Ray's partitioned write drops its key columns from the
                # files, and an output file should still say what it is without its directory name
                .append_column("_status", pa.array(status, pa.string()))
                .append_column("_source", batch.column("source")))


# --- quality: annotate a sample, train, score -----------------------------------------------------
def _heuristic_annotations(texts: list[str]) -> list[dict]:
    """Weak labels without a judge: the passage heuristics, scaled to the judge's 0-5 scales."""
    from phi4ray.curate.quality import passage_scores, segment_passages

    out = []
    for text in texts:
        scores = passage_scores(segment_passages(text)) or [{"factual": 0.0, "reasoning": 0.0}]
        fact = sum(s["factual"] for s in scores) / len(scores)
        reas = sum(s["reasoning"] for s in scores) / len(scores)
        out.append({"educational_value": 5 * (fact + reas) / 2, "reasoning_depth": 5 * reas,
                    "justification": "passage heuristics", "template_id": "heuristic", "template_version": "1"})
    return out


async def _judge_annotations(texts: list[str], url: str, name: str, api_key_env: str,
                             max_tokens: int) -> list[dict | None]:
    import asyncio

    from phi4ray.curate.quality import annotation_prompt, parse_annotation
    from phi4ray.endpoint import EndpointConfig, EndpointError, OpenAIEndpoint

    async with OpenAIEndpoint(EndpointConfig(base_url=url, model=name, api_key_env=api_key_env,
                                             timeout_s=600)) as judge:
        async def one(text: str):
            try:
                reply = await judge.chat([{"role": "user", "content": annotation_prompt(text)}],
                                         max_tokens=max_tokens, temperature=0.0)
            except EndpointError:
                return None  # counted as unannotated; the classifier trains on the rest
            return parse_annotation(reply["choices"][0]["message"]["content"])

        return list(await asyncio.gather(*(one(t) for t in texts)))


def annotate(texts: list[str], cfg) -> list[dict | None]:
    import asyncio

    q = cfg.curate.quality
    if q.annotator == "heuristic":
        return _heuristic_annotations(texts)
    if q.annotator == "endpoint":
        return asyncio.run(_judge_annotations(texts, q.url, q.name, q.api_key_env, q.judge_max_tokens))
    from actors.serve_stage import release, start

    info = start({"phi4ray-annotator": q.model}, cfg, app="phi4ray-annotator")
    try:
        return asyncio.run(_judge_annotations(texts, info["url"], "phi4ray-annotator",
                                              cfg.serve.api_key_env or "PHI4RAY_NO_KEY", q.judge_max_tokens))
    finally:
        release(info)


def train_quality(files: list[str], drop: set[str], cfg, out: Path) -> tuple[str, dict]:
    """Annotate a hash-picked sample of the surviving documents, train the classifier, save it
    with its annotations. Returns (classifier path or "" when it could not be trained, metrics)."""
    import statistics

    from phi4ray.curate.quality import labels_from_annotations, train_classifier

    q = cfg.curate.quality
    texts = {}
    for f in files:  # only kept prose: ids and texts of a few hundred docs reach the driver
        t = pq.read_table(f, columns=["doc_id", "text", "status", "content_type"]).to_pylist()
        texts.update({r["doc_id"]: r["text"] for r in t
                      if r["status"] == KEPT and r["content_type"] != "code" and r["doc_id"] not in drop})
    ids = _sample(texts, q.annotate_docs)
    notes = annotate([texts[d] for d in ids], cfg)
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


# --- the stage ------------------------------------------------------------------------------------
def _swap_in(tmp: Path, dest: Path) -> None:
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def write_outputs(files: list[str], exact: set[str], fuzzy: set[str], classifier: str, cfg, run_dir: Path) -> None:
    """One pass: every row with its final status, partitioned by status and source, then moved into
    RUN/curated/<source> (kept), RUN/curate/dropped and RUN/curate/quarantined."""
    import ray

    tmp = run_dir / "curate" / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ds = ray.data.read_parquet(files).map_batches(
        Finalize, batch_format="pyarrow", concurrency=1, fn_constructor_kwargs={
            "exact": exact, "fuzzy": fuzzy, "classifier": classifier, "min_score": cfg.curate.quality.min_score})
    ds.write_parquet(str(tmp), partition_cols=["_status", "_source"])
    curated = run_dir / "curated.tmp"
    shutil.rmtree(curated, ignore_errors=True)
    curated.mkdir()
    for part in sorted((tmp / f"_status={KEPT}").glob("_source=*")):
        part.rename(curated / part.name.split("=", 1)[1])
    for status, name in ((DROPPED, "dropped"), (QUARANTINED, "quarantined")):
        dest = run_dir / "curate" / name
        shutil.rmtree(dest, ignore_errors=True)
        if (tmp / f"_status={status}").is_dir():
            (tmp / f"_status={status}").rename(dest)
    _swap_in(curated, run_dir / "curated")
    shutil.rmtree(tmp, ignore_errors=True)


def funnel(files: list[str], exact: set[str], fuzzy: set[str], run_dir: Path) -> dict:
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


def run_curate(run_dir: Path, cfg) -> dict:
    from actors.eval_stage import suite_files

    run_dir = Path(run_dir)
    if manifest.is_complete(run_dir, STAGE, cfg):
        return manifest.read_manifest(run_dir, STAGE)
    t0 = time.time()
    shards, skipped = plan_shards(run_dir, cfg)
    eval_files = [str(p) for p in suite_files(run_dir, cfg)] + list(cfg.curate.eval_files)
    work = run_dir / "curate"
    with ray_session():
        filter_shards(shards, cfg, eval_files, work / "shards")
        t_shards = time.time() - t0
        files = [str(work / "shards" / f"{s['shard']}.parquet") for s in shards]
        exact, fuzzy, n_edges = dedup(files)
        t_dedup = time.time() - t0 - t_shards
        classifier, quality = train_quality(files, exact | fuzzy, cfg, work / "quality")
        write_outputs(files, exact, fuzzy, classifier, cfg, run_dir)
    stats = {**funnel(files, exact, fuzzy, run_dir), "shards": len(shards), "skipped_files": len(skipped),
             "duplicate_edges": n_edges, "quality": quality}
    (work / "stats.json").write_text(json.dumps(stats, indent=2))
    print(f"  curate: read {stats['read']}, kept {stats['kept']} {stats['kept_by_source']}, dropped "
          f"{stats['dropped']} {stats['dropped_by_filter']}, quarantined {stats['quarantined']}")
    manifest.write_manifest(
        run_dir, STAGE, cfg, inputs={"shards": len(shards), "eval_files": eval_files},
        outputs={"curated": str(run_dir / "curated"), "stats": str(work / "stats.json")},
        counts={k: stats[k] for k in ("read", "kept", "dropped", "quarantined", "kept_by_source",
                                      "dropped_by_filter")},
        timings={"shards_s": round(t_shards, 1), "dedup_s": round(t_dedup, 1), "total_s": round(time.time() - t0, 1)})
    return manifest.read_manifest(run_dir, STAGE)
