"""Stage `curate`: raw inputs -> RUN/curated/<source>/*.parquet on Ray Data.

Two halves, the library pieces in phi4ray/curate/:
1. Per input file (a shard), in `ShardFilter` actors that build the document filters once (the
   lid.176 model, the evaluation n-gram index): read, then `curate.filters` in order, then the
   dedup keys (phi4ray.curate.documents); each shard's rows, kept or not, are written atomically
   to RUN/curate/shards/<shard>.parquet (phi4ray.curate.shards): a rerun after a crash redoes only
   the shards without a file.
2. Across documents, over those files: exact dedup (group by normalised-text hash) and MinHash
   LSH dedup (explode band keys, group by key, star edges, union-find over the duplicate edges
   only), then the quality classifier (annotate a sample, train: phi4ray.curate.quality), then one
   write partitioned by status and source (phi4ray.curate.outputs.finalize_batch), moved into place
   whole. Deterministic, so a rerun gives the same output as an uninterrupted run.
RUN/curate/stats.json is the funnel: read = kept + dropped (by filter) + quarantined (by reason).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from phi4ray.curate.classifier import QualityClassifier
from phi4ray.curate.dedup import components, exact_losers, star_edges, to_drop
from phi4ray.curate.documents import KEPT, DocumentFilters
from phi4ray.curate.outputs import PARTITION_COLS, finalize_batch, funnel, place_outputs
from phi4ray.curate.quality import train_quality
from phi4ray.curate.readers import list_inputs
from phi4ray.curate.shards import filter_shard, pending_shards, plan_shards, shard_file
from phi4ray.errors import MissingInput
from phi4ray.evals.files import decontam_files
from phi4ray.stage import Stage, StageResult


# --- half 1: per shard ----------------------------------------------------------------------------
class ShardFilter:
    """`map_batches` actor over shard descriptors; writes each shard's rows, returns its counts."""

    def __init__(self, config, eval_files: list[str], out_dir: str):
        self.filters = DocumentFilters(config, eval_files)
        self.out = Path(out_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        done = [{"shard": s["shard"], "rows": filter_shard(s, self.filters, self.out)} for s in batch.to_pylist()]
        return pa.Table.from_pylist(done, schema=pa.schema([("shard", pa.string()), ("rows", pa.int64())]))


def filter_shards(shards: list[dict], cfg, eval_files: list[str], out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = pending_shards(shards, out_dir)
    if not todo:
        return 0
    ds = ray.data.from_items(todo, override_num_blocks=len(todo))
    ds = ds.map_batches(ShardFilter, batch_size=1, batch_format="pyarrow",
                        concurrency=min(cfg.curate.shard_actors, len(todo)),
                        fn_constructor_kwargs={"config": cfg.curate, "eval_files": eval_files,
                                               "out_dir": str(out_dir)})
    return sum(r["rows"] for r in ds.take_all())


# --- half 2: across documents --------------------------------------------------------------------
def dedup(files: list[str]) -> tuple[set[str], set[str], int]:
    """(exact duplicates, fuzzy duplicates, duplicate edges): ids to drop, each keeping the
    smallest doc id of its group. Only duplicates reach the driver, never texts or signatures."""
    kept = ray.data.read_parquet(files, columns=["doc_id", "status", "exact_key", "bands"]).filter(
        expr=f"status == '{KEPT}'")
    # Ray's default of 200 shuffle partitions is per-partition overhead a small corpus pays in
    # full; one partition per ~10k docs, 2 to 200
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    parts = min(200, max(2, rows // 10_000))
    exact = {r["doc_id"] for r in kept.groupby("exact_key", num_partitions=parts).map_groups(
        exact_losers, batch_format="pyarrow").take_all()}

    def explode(r):
        return [] if r["doc_id"] in exact else [{"band": k, "doc_id": r["doc_id"]} for k in r["bands"]]

    edges = kept.flat_map(explode).groupby("band", num_partitions=parts).map_groups(
        star_edges, batch_format="pyarrow").take_all()
    fuzzy = to_drop(components((e["a"], e["b"]) for e in edges))
    return exact, fuzzy, len(edges)


class Finalize:
    """`map_batches` actor: loads the classifier once, then `finalize_batch` on every batch."""

    def __init__(self, exact: set[str], fuzzy: set[str], classifier: str, min_score: float):
        self.exact, self.fuzzy, self.min_score = exact, fuzzy, min_score
        self.classifier = QualityClassifier.load(classifier) if classifier else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        return finalize_batch(batch, self.exact, self.fuzzy, self.classifier, self.min_score)


def write_outputs(files: list[str], exact: set[str], fuzzy: set[str], classifier: str, cfg, run_dir: Path) -> None:
    """One pass: every row with its final status, partitioned by status and source, then moved into
    RUN/curated/<source> (kept), RUN/curate/dropped and RUN/curate/quarantined."""
    tmp = run_dir / "curate" / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ds = ray.data.read_parquet(files).map_batches(
        Finalize, batch_format="pyarrow", concurrency=1, fn_constructor_kwargs={
            "exact": exact, "fuzzy": fuzzy, "classifier": classifier, "min_score": cfg.curate.quality.min_score})
    ds.write_parquet(str(tmp), partition_cols=PARTITION_COLS)
    place_outputs(tmp, run_dir)


# --- the stage ------------------------------------------------------------------------------------
def check(cfg, run_dir: Path, options: dict) -> None:
    """Every input path names something, found before Ray starts (the built-in corpus always does)."""
    for source, path in cfg.curate.parsed_inputs():
        try:
            list_inputs([path], cfg.curate.reader)
        except FileNotFoundError as e:
            raise MissingInput(f"curate.inputs: {source}={path}: {e}") from None


def run(ctx) -> StageResult:
    run_dir, cfg = Path(ctx.run_dir), ctx.cfg
    t0 = time.time()
    shards, skipped = plan_shards(run_dir, cfg)
    eval_files = [str(p) for p in decontam_files(run_dir, cfg)] + list(cfg.curate.eval_files)
    work = run_dir / "curate"
    with ctx.cluster.session():
        filter_shards(shards, cfg, eval_files, work / "shards")
        t_shards = time.time() - t0
        files = [str(shard_file(work / "shards", s)) for s in shards]
        exact, fuzzy, n_edges = dedup(files)
        t_dedup = time.time() - t0 - t_shards
        classifier, quality = train_quality(files, exact | fuzzy, cfg, work / "quality", ctx.fleet)
        write_outputs(files, exact, fuzzy, classifier, cfg, run_dir)
    stats = {**funnel(files, exact, fuzzy, run_dir), "shards": len(shards), "skipped_files": len(skipped),
             "duplicate_edges": n_edges, "quality": quality}
    (work / "stats.json").write_text(json.dumps(stats, indent=2))
    return StageResult(
        counts={k: stats[k] for k in ("read", "kept", "dropped", "quarantined", "kept_by_source", "dropped_by_filter")},
        outputs={"curated": str(run_dir / "curated"), "stats": str(work / "stats.json")},
        inputs={"shards": len(shards), "eval_files": eval_files},
        timings={"shards_s": round(t_shards, 1), "dedup_s": round(t_dedup, 1)})


STAGE = Stage(
    name="curate",
    summary="raw inputs -> RUN/curated: read, filter, deduplicate, decontaminate, quality-score",
    run=run,
    # the decontamination set (phi4ray.evals.files.decontam_files) is every built-in suite at its
    # largest size: it depends on eval.seed and eval.files only, so eval.size or eval.suites
    # re-run eval alone; nothing here reads the run's training seed
    sections=("curate", "eval.seed", "eval.files"),
    outputs=("curated", "curate", "eval/decontam"),
    headline=("read", "kept", "dropped", "quarantined"),
    check=check,
)
