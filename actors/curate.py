"""Stage `curate`: raw inputs -> RUN/curated/<source>/*.parquet on Ray Data.

Two halves, the library pieces in phi4ray/curate/:
1. Per input file (a shard), in `ShardFilter` actors that build the document filters once (the
   lid.176 model, the evaluation n-gram index): read, then `curate.filters` in order, then the
   dedup keys (phi4ray.curate.documents), batch by batch (phi4ray.curate.shards); each shard's
   rows, kept or not, go to RUN/curate/shards/<shard>.parquet, moved into place when whole: a
   rerun after a crash redoes only the shards without a file.
2. Across documents, over those files, as Ray Data jobs: exact dedup (group by normalised-text
   hash: the losers are a dataset) and MinHash LSH dedup (the survivors' band keys exploded and
   grouped, star edges, union-find over the duplicate edges on the driver); the ids to drop are a
   dataset. The quality classifier is trained on a sample drawn by a join and a top-k (only the k
   texts reach the driver). The kept documents' ids are joined with the ids to drop, the verdicts
   written per shard, and `Finalize` actors, as many as in the first half, apply them with the
   classifier shard by shard into RUN/curated/<source>/<shard>.parquet (dropped and quarantined
   rows aside), moved into place whole. Deterministic: a rerun gives the same files.
The driver holds counts, the duplicate edges' union-find (O(duplicates)), the k sampled texts and
the manifests. RUN/curate/stats.json is the funnel: read = kept + dropped (by filter) +
quarantined (by reason).
"""
from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data.expressions import col

from phi4ray.curate.classifier import QualityClassifier
from phi4ray.curate.dedup import components, exact_losers, star_edges, to_drop
from phi4ray.curate.documents import KEPT, DocumentFilters
from phi4ray.curate.outputs import finalize_shard, funnel, place_outputs
from phi4ray.curate.quality import RANK_ORDER, top_ranked, train_quality
from phi4ray.curate.readers import list_inputs
from phi4ray.curate.shards import filter_shard, pending_shards, plan_shards, shard_file
from phi4ray.errors import MissingInput
from phi4ray.evals.files import decontam_files
from phi4ray.stage import Stage, StageResult

COUNTS = pa.schema([("shard", pa.string()), ("counts", pa.string())])
DROP = pa.schema([("doc_id", pa.string()), ("dedup", pa.string())])
FUZZY_BLOCK = 1_000_000  # fuzzy losers per block handed from the driver to the object store


def _per_shard(todo: list[dict], actor, actors: int, kwargs: dict) -> list[dict]:
    """One Ray Data pass of `actor` over shard descriptors, one shard per call, `actors` at once;
    returns each shard's counts (JSON from the actor)."""
    ds = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
        actor, batch_size=1, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=max(1, min(actors, len(todo)))), fn_constructor_kwargs=kwargs)
    return [json.loads(r["counts"]) for r in ds.take_all()]


# --- half 1: per shard ----------------------------------------------------------------------------
class ShardFilter:
    """`map_batches` actor over shard descriptors; writes each shard's rows, returns its counts."""

    def __init__(self, config, eval_files: list[str], out_dir: str):
        self.filters = DocumentFilters(config, eval_files)
        self.out = Path(out_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        done = [(s["shard"], json.dumps(filter_shard(s, self.filters, self.out))) for s in batch.to_pylist()]
        return pa.table({"shard": [d for d, _ in done], "counts": [c for _, c in done]}, schema=COUNTS)


def filter_shards(shards: list[dict], cfg, eval_files: list[str], out_dir: Path, actors: int) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = pending_shards(shards, out_dir)
    if not todo:
        return 0
    return sum(_per_shard(todo, ShardFilter, actors, {"config": cfg.curate, "eval_files": eval_files,
                                                      "out_dir": str(out_dir)}))


# --- half 2: across documents --------------------------------------------------------------------
def partitions(files: list[str]) -> int:
    """Shuffle partitions for the groupbys and joins: Ray's default of 200 is per-partition
    overhead a small corpus pays in full; one partition per ~10k docs, 2 to 200."""
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return min(200, max(2, rows // 10_000))


def kept(files: list[str], columns: list[str], **read) -> ray.data.Dataset:
    """The kept rows of the shard files (after the per-document filters), `columns` only (plus
    `path` with include_paths). The columns are read from the files, not selected after reading: a
    read task batches several shard files, and their texts would otherwise pass through it."""
    stored = ["status"] + [c for c in columns if c != "path"]
    return (ray.data.read_parquet(files, columns=stored, **read)
            .filter(expr=col("status") == KEPT).select_columns(columns))


def _with(table: pa.Table, name: str, value: str) -> pa.Table:
    return table.append_column(name, pa.array([value] * table.num_rows, pa.string()))


def dedup(files: list[str], parts: int) -> tuple[ray.data.Dataset, int]:
    """The ids to drop as a dataset (doc_id, dedup: "dedup:exact" or "dedup:minhash"), each
    duplicate group keeping its smallest doc id; and the number of duplicate edges.

    Exact losers stay a dataset (materialized: O(exact duplicates) in the object store) and are
    anti-joined out before MinHash, so a page copied 10^5 times adds no edges. The fuzzy edges
    stream to the driver into a union-find whose memory is O(documents with a near-duplicate): the
    one thing here that grows with the corpus on the driver, bounded by the duplicates, never by
    the documents (phi4ray.curate.dedup says how to make it distributed past a few 10^8)."""
    exact = kept(files, ["doc_id", "exact_key"]).groupby("exact_key", num_partitions=parts).map_groups(
        exact_losers, batch_format="pyarrow").map_batches(
        _with, batch_format="pyarrow", fn_args=("dedup", "dedup:exact")).materialize()
    survivors = kept(files, ["doc_id", "bands"]).join(exact, join_type="left_anti", num_partitions=parts,
                                                      on=("doc_id",))

    def explode(r):
        return [{"band": k, "doc_id": r["doc_id"]} for k in r["bands"]]

    edges = survivors.flat_map(explode).groupby("band", num_partitions=parts).map_groups(
        star_edges, batch_format="pyarrow")
    n_edges = 0

    def pairs():
        nonlocal n_edges
        for b in edges.iter_batches(batch_format="pyarrow"):
            n_edges += b.num_rows
            yield from zip(b.column("a").to_pylist(), b.column("b").to_pylist())

    fuzzy = sorted(to_drop(components(pairs())))
    blocks = [pa.table({"doc_id": fuzzy[i:i + FUZZY_BLOCK], "dedup": ["dedup:minhash"] * len(fuzzy[i:i + FUZZY_BLOCK])},
                       schema=DROP) for i in range(0, len(fuzzy), FUZZY_BLOCK)]
    drop = exact.union(ray.data.from_arrow(blocks or [DROP.empty_table()]))
    return drop, n_edges


def quality_sample(files: list[str], drop: ray.data.Dataset, k: int, parts: int) -> list[tuple[str, str]]:
    """(doc id, text) of the first k kept prose documents not dropped as duplicates, in the sample
    order (phi4ray.curate.quality.sample_rank): an anti-join, a top-k per block and a sort of what
    is left; only the k ids, then their k texts, reach the driver."""
    prose = (ray.data.read_parquet(files, columns=["doc_id", "status", "content_type"])
             .filter(expr=(col("status") == KEPT) & (col("content_type") != "code")).select_columns(["doc_id"]))
    ids = [r["doc_id"] for r in prose.join(drop, join_type="left_anti", num_partitions=parts, on=("doc_id",))
           .map_batches(top_ranked, batch_format="pyarrow", fn_args=(k,))
           .sort([c for c, _ in RANK_ORDER]).limit(k).take_all()]
    if not ids:
        return []
    texts = {r["doc_id"]: r["text"] for r in ray.data.read_parquet(files, columns=["doc_id", "text"])
             .filter(expr=col("doc_id").is_in(ids)).take_all()}
    return [(d, texts[d]) for d in ids]


def shard_id(batch: pa.Table) -> pa.Table:
    """The shard a row came from (its file's name, phi4ray.curate.shards.shard_file), for the
    `path` column `include_paths` adds."""
    shard = pc.replace_substring_regex(batch.column("path"), r"^.*/([^/]+)\.parquet$", r"\1")
    return batch.drop_columns(["path"]).append_column("shard", shard)


def write_verdicts(files: list[str], drop: ray.data.Dataset, parts: int, out: Path) -> None:
    """The kept documents' ids joined with the ids to drop: one folder of (doc_id, dedup) per
    shard with any, out/shard=<shard>/ (O(duplicates) rows in all)."""
    shutil.rmtree(out, ignore_errors=True)
    hits = kept(files, ["doc_id", "path"], include_paths=True).map_batches(shard_id, batch_format="pyarrow").join(
        drop, join_type="inner", num_partitions=parts, on=("doc_id",))
    hits.write_parquet(str(out), partition_cols=["shard"])


class Finalize:
    """`map_batches` actor over shard descriptors: loads the classifier once, then applies each
    shard's verdicts and the classifier to its rows (`finalize_shard`); returns its counts."""

    def __init__(self, shards_dir: str, verdicts: str, classifier: str, min_score: float, out_dir: str):
        self.shards, self.verdicts, self.out = Path(shards_dir), Path(verdicts), Path(out_dir)
        self.classifier = QualityClassifier.load(classifier) if classifier else None
        self.min_score = min_score

    def __call__(self, batch: pa.Table) -> pa.Table:
        done = []
        for s in batch.to_pylist():
            mine = self.verdicts / f"shard={s['shard']}"
            table = pq.read_table(mine, columns=["doc_id", "dedup"]) if mine.is_dir() else DROP.empty_table()
            dedup = dict(zip(table.column("doc_id").to_pylist(), table.column("dedup").to_pylist()))
            counts = finalize_shard(shard_file(self.shards, s), s, dedup, self.classifier, self.min_score, self.out)
            done.append((s["shard"], json.dumps(counts)))
        return pa.table({"shard": [d for d, _ in done], "counts": [c for _, c in done]}, schema=COUNTS)


def write_outputs(shards: list[dict], verdicts: Path, classifier: str, cfg, run_dir: Path, actors: int) -> Counter:
    """The final pass, shard by shard with `actors` at once: every row with its final status into
    RUN/curated/<source> (kept), RUN/curate/dropped and RUN/curate/quarantined. Returns the rows
    by "<status>:<reason>" ("kept" for the kept)."""
    tmp = run_dir / "curate" / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts = _per_shard(shards, Finalize, actors, {
        "shards_dir": str(run_dir / "curate" / "shards"), "verdicts": str(verdicts), "classifier": classifier,
        "min_score": cfg.curate.quality.min_score, "out_dir": str(tmp)})
    place_outputs(tmp, run_dir)
    return sum((Counter(c) for c in counts), Counter())


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
        # one actor per CPU Ray Data may use unless curate.shard_actors says otherwise; the final
        # pass runs as many: it is as parallel as the first
        actors = cfg.curate.shard_actors or ctx.cluster.data_cpus()
        filter_shards(shards, cfg, eval_files, work / "shards", actors)
        t_shards = time.time() - t0
        files = [str(shard_file(work / "shards", s)) for s in shards]
        parts = partitions(files)
        drop, n_edges = dedup(files, parts)
        t_dedup = time.time() - t0 - t_shards
        sample = quality_sample(files, drop, cfg.curate.quality.annotate_docs, parts)
        classifier, quality = train_quality(sample, cfg, work / "quality", ctx.fleet)
        write_verdicts(files, drop, parts, work / "verdicts")
        reasons = write_outputs(shards, work / "verdicts", classifier, cfg, run_dir, actors)
    stats = {**funnel(files, reasons, run_dir), "shards": len(shards), "skipped_files": len(skipped),
             "duplicate_edges": n_edges, "quality": quality}
    (work / "stats.json").write_text(json.dumps(stats, indent=2))
    return StageResult(
        counts={k: stats[k] for k in ("read", "kept", "dropped", "quarantined", "kept_by_source", "dropped_by_filter")},
        outputs={"curated": str(run_dir / "curated"), "stats": str(work / "stats.json")},
        inputs={"shards": len(shards), "eval_files": eval_files},
        timings={"shards_s": round(t_shards, 1), "dedup_s": round(t_dedup, 1),
                 "total_s": round(time.time() - t0, 1)})


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
