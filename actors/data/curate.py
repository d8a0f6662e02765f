"""Stage `curate`: raw inputs -> RUN/curated/<source>/*.parquet on Ray Data.

Two halves, the library pieces in phi4ray/data/curate/:
1. Per input file (a shard), in `ShardFilter` actors that build the document filters once (the
   lid.176 model, the evaluation n-gram index): read, then `curate.filters` in order, then the
   dedup keys (phi4ray.data.curate.documents), batch by batch (phi4ray.data.curate.shards); each shard's
   rows, kept or not, go to RUN/curate/shards/<shard>.parquet, moved into place when whole: a
   rerun after a crash redoes only the shards without a file.
2. Across documents, over those files, as Ray Data jobs: every kept document's exact key and
   MinHash band keys go through one hash shuffle, each partition resolved whole
   (phi4ray.data.curate.dedup: exact losers, and star edges between distinct texts sharing a band); the
   edges stream into a union-find on the driver; the ids to drop (each with its shard) are written
   per shard. The quality classifier is trained on a sample drawn by a top-k per shard and a sort
   of those (only the k ids, then the k texts, reach the driver). `Finalize` actors, as many as in
   the first half, apply the verdicts and the classifier shard by shard into
   RUN/curated/<source>/<shard>.parquet (dropped and quarantined rows aside), moved into place
   whole. Every per-shard pass reads its file a row group at a time. Deterministic: a rerun gives
   the same files.
The driver holds counts, the duplicate edges' union-find (O(duplicates)), the k sampled texts and
the manifests. RUN/curate/stats.json is the funnel: read = kept + dropped (by filter) +
quarantined (by reason), and under "quality" who labelled the classifier's sample, its held-out
accuracy on those labels and the prose it dropped below curate.quality.min_score.
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

from phi4ray.data.curate.classifier import QualityClassifier
from phi4ray.data.curate.dedup import EDGE, EXACT, components, key_rows, resolve_partition, to_drop
from phi4ray.data.curate.documents import KEPT, DocumentFilters
from phi4ray.data.curate.outputs import QUALITY, finalize_shard, funnel, place_outputs
from phi4ray.data.curate.quality import RANK_ORDER, quality_line, top_ranked, train_quality
from phi4ray.data.curate.readers import list_inputs
from phi4ray.data.curate.shards import filter_shard, pending_shards, plan_shards, shard_file
from phi4ray.evals.files import decontam_files
from phi4ray.run.console import say
from phi4ray.run.errors import MissingInput
from phi4ray.run.stage import Stage, StageResult

SHARDS_PER_TASK = 16
COUNTS = pa.schema([("shard", pa.string()), ("counts", pa.string())])
DROP = pa.schema([("doc_id", pa.string()), ("shard", pa.string()), ("dedup", pa.string())])
TEXTS = pa.schema([("doc_id", pa.string()), ("text", pa.large_string())])
SAMPLE = pa.schema([("doc_id", pa.string()), ("shard", pa.string()), ("rank", pa.int64())])
QUALITY_COUNTS = ("annotator", "judge", "parsed", "positives", "heldout_accuracy", "balanced_accuracy", "min_score",
                  "dropped", "not_dropping", "skipped")


def _tasks(items: list) -> ray.data.Dataset:
    """`items` (shard descriptors) in blocks of up to SHARDS_PER_TASK, at least 4 blocks per
    cluster CPU while there are shards for them: a code folder is a shard per file, and one task
    per tiny file cost more in scheduling than in work (2,542 shards: 75 s of a 10 s pass)."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    blocks = min(len(items), max(-(-len(items) // SHARDS_PER_TASK), 4 * cpus))
    return ray.data.from_items(items, override_num_blocks=max(1, blocks))


def _per_shard(todo: list[dict], actor, actors: int, kwargs: dict) -> list[dict]:
    """One Ray Data pass of `actor` over shard descriptors, a block of them per call (each shard
    still written whole on its own), `actors` at once; returns each shard's counts (JSON from
    the actor)."""
    ds = _tasks(todo).map_batches(
        actor, batch_size=None, batch_format="pyarrow",
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
    """Hash partitions of the dedup shuffle: Ray's default of 200 is per-partition overhead a small
    corpus pays in full; one partition per ~10k docs (~150k key rows, ~15 MB), 2 to 200."""
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return min(200, max(2, rows // 10_000))


def _shards(files: list[str]) -> ray.data.Dataset:
    """One row per shard file (its path and shard id), `_tasks` blocks: the per-shard passes below
    read one file at a time, a row group at a time, so a task holds one filter batch, whatever
    the files."""
    return _tasks([{"path": f, "shard": Path(f).stem} for f in files])


def _kept_groups(path: str, columns: list[str]):
    """The kept rows of one shard file, `columns` only, a row group at a time."""
    f = pq.ParquetFile(path)
    for g in range(f.num_row_groups):
        t = f.read_row_group(g, columns=["status"] + columns)
        yield t.filter(pc.equal(t.column("status"), KEPT)).select(columns)


def shard_keys(batch: pa.Table):
    """map_batches over `_shards`: the dedup key rows of each file's kept documents."""
    for path, shard in zip(batch.column("path").to_pylist(), batch.column("shard").to_pylist()):
        for t in _kept_groups(path, ["doc_id", "exact_key", "bands"]):
            if t.num_rows:
                yield key_rows(t, shard)


def _write_verdicts(rows: pa.Table, out: Path, name: str) -> None:
    """rows (doc_id, shard, dedup) into out/shard=<shard>/<name>.parquet, one file per shard,
    each written whole under a temporary name first (a retried task writes the same files)."""
    rows = rows.sort_by([("shard", "ascending"), ("doc_id", "ascending")])  # one pass, not a filter per shard
    shards = rows.column("shard").to_pylist()
    starts = [i for i in range(len(shards)) if i == 0 or shards[i] != shards[i - 1]]
    for lo, hi in zip(starts, starts[1:] + [len(shards)]):
        shard, mine = shards[lo], rows.slice(lo, hi - lo).select(["doc_id", "dedup"])
        dest = out / f"shard={shard}" / f"{name}.parquet"
        dest.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(mine, dest.with_name(dest.name + ".tmp"))
        dest.with_name(dest.name + ".tmp").replace(dest)


def resolve_and_write(part: pa.Table, verdicts: str) -> pa.Table:
    """map_batches over one whole hash partition of key rows (`resolve_partition`): writes its
    exact losers to the verdicts of their shards, returns its near-duplicate edges."""
    grouped = resolve_partition(part)
    exact = grouped.filter(pc.equal(grouped.column("dedup"), EXACT))
    if exact.num_rows:  # the partition's smallest key names its files: the same input, the same names
        _write_verdicts(exact, Path(verdicts), "exact-" + pc.min(part.column("key")).as_py().hex()[:40])
    return grouped.filter(pc.equal(grouped.column("dedup"), EDGE))


def dedup(files: list[str], parts: int, verdicts: Path) -> int:
    """Writes the ids to drop, each duplicate group keeping its smallest doc id, one folder per
    shard with any: verdicts/shard=<shard>/*.parquet (doc_id, dedup "dedup:exact" or
    "dedup:minhash"); returns the number of near-duplicate edges.

    One Ray Data job: a hash shuffle of the key rows (phi4ray.data.curate.dedup: exact and band keys
    together), each partition read whole as Ray's own map_groups does (repartition by key, then
    whole blocks). The exact losers are written where they are found and never reach the driver;
    the near-duplicate edges stream to the driver into a union-find whose memory is O(documents
    with a near-duplicate): the one thing here that grows with the corpus on the driver, bounded
    by the duplicates, never by the documents."""
    shutil.rmtree(verdicts, ignore_errors=True)
    verdicts.mkdir(parents=True)
    edges = (_shards(files).map_batches(shard_keys, batch_size=None, batch_format="pyarrow")
             .repartition(parts, keys=["key"], sort=True)
             .map_batches(resolve_and_write, batch_size=None, batch_format="pyarrow", fn_args=(str(verdicts),)))
    shard_of, n_edges = {}, 0

    def pairs():
        nonlocal n_edges
        for b in edges.iter_batches(batch_format="pyarrow"):
            n_edges += b.num_rows
            for a, a_shard, d, d_shard in zip(*(b.column(c).to_pylist() for c in ("rep", "rep_shard", "doc_id", "shard"))):
                shard_of[a], shard_of[d] = a_shard, d_shard
                yield a, d

    fuzzy = sorted(to_drop(components(pairs())))
    _write_verdicts(pa.table({"doc_id": fuzzy, "shard": [shard_of[d] for d in fuzzy],
                              "dedup": ["dedup:minhash"] * len(fuzzy)}, schema=DROP), verdicts, "minhash")
    return n_edges


def shard_verdicts(verdicts: Path, shard: str) -> dict[str, str]:
    """doc id -> "dedup:exact" / "dedup:minhash" for the shard's kept documents that lost."""
    mine = verdicts / f"shard={shard}"
    table = pq.read_table(mine, columns=["doc_id", "dedup"]) if mine.is_dir() else DROP.empty_table()
    return dict(zip(table.column("doc_id").to_pylist(), table.column("dedup").to_pylist()))


def sample_candidates(batch: pa.Table, verdicts: str, k: int) -> pa.Table:
    """map_batches over `_shards`: each file's first k kept prose documents that are not dropped
    as duplicates, in the sample order (doc_id, shard, rank)."""
    out = []
    for path, shard in zip(batch.column("path").to_pylist(), batch.column("shard").to_pylist()):
        lost = shard_verdicts(Path(verdicts), shard)
        for t in _kept_groups(path, ["doc_id", "content_type"]):
            ids = [d for d, c in zip(t.column("doc_id").to_pylist(), t.column("content_type").to_pylist())
                   if c != "code" and d not in lost]
            out.append(top_ranked(pa.table({"doc_id": pa.array(ids, pa.string()),
                                            "shard": pa.array([shard] * len(ids), pa.string())}), k))
    return pa.concat_tables(out).sort_by(RANK_ORDER).slice(0, k) if out else SAMPLE.empty_table()


def sample_texts(batch: pa.Table) -> pa.Table:
    """map_batches over the sampled (path, ids) per shard: their texts, a row group at a time."""
    out = []
    for path, ids in zip(batch.column("path").to_pylist(), batch.column("ids").to_pylist()):
        for t in _kept_groups(path, ["doc_id", "text"]):
            out.append(t.filter(pc.is_in(t.column("doc_id"), value_set=pa.array(ids, pa.string()))))
    return pa.concat_tables(out) if out else TEXTS.empty_table()


def quality_sample(files: list[str], verdicts: Path, k: int) -> list[tuple[str, str]]:
    """(doc id, text) of the first k kept prose documents not dropped as duplicates, in the sample
    order (phi4ray.data.curate.quality.sample_rank): a top-k per shard, then a sort and limit of those;
    only the k ids, then their k texts (read from their shards alone), reach the driver."""
    chosen = (_shards(files).map_batches(sample_candidates, batch_size=None, batch_format="pyarrow",
                                         fn_args=(str(verdicts), k))
              .sort([c for c, _ in RANK_ORDER]).limit(k).take_all())
    if not chosen:
        return []
    by_shard: dict[str, list[str]] = {}
    for r in chosen:
        by_shard.setdefault(r["shard"], []).append(r["doc_id"])
    paths = {Path(f).stem: f for f in files}
    items = [{"path": paths[s], "ids": ids} for s, ids in sorted(by_shard.items())]
    texts = {r["doc_id"]: r["text"] for r in _tasks(items)
             .map_batches(sample_texts, batch_size=None, batch_format="pyarrow").take_all()}
    return [(r["doc_id"], texts[r["doc_id"]]) for r in chosen]


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
            counts = finalize_shard(shard_file(self.shards, s), s, shard_verdicts(self.verdicts, s["shard"]),
                                    self.classifier, self.min_score, self.out)
            done.append((s["shard"], json.dumps(counts)))
        return pa.table({"shard": [d for d, _ in done], "counts": [c for _, c in done]}, schema=COUNTS)


def write_outputs(shards: list[dict], verdicts: Path, classifier: str, min_score: float, run_dir: Path,
                  actors: int) -> Counter:
    """The final pass, shard by shard with `actors` at once: every row with its final status into
    RUN/curated/<source> (kept), RUN/curate/dropped and RUN/curate/quarantined, prose scored below
    `min_score` dropped. Returns the rows by "<status>:<reason>" ("kept" for the kept)."""
    tmp = run_dir / "curate" / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts = _per_shard(shards, Finalize, actors, {
        "shards_dir": str(run_dir / "curate" / "shards"), "verdicts": str(verdicts), "classifier": classifier,
        "min_score": min_score, "out_dir": str(tmp)})
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
        n_edges = dedup(files, parts, work / "verdicts")
        t_dedup = time.time() - t0 - t_shards
        sample = quality_sample(files, work / "verdicts", cfg.curate.quality.annotate_docs)
        classifier, quality = train_quality(sample, cfg, work / "quality", ctx.fleet)
        reasons = write_outputs(shards, work / "verdicts", classifier, quality["min_score"], run_dir, actors)
    counts = funnel(files, reasons, run_dir)
    quality["dropped"] = counts["dropped_by_filter"].get(QUALITY, 0)
    say(quality_line(quality, quality["dropped"]))
    stats = {**counts, "shards": len(shards), "skipped_files": len(skipped), "duplicate_edges": n_edges,
             "quality": quality}
    (work / "stats.json").write_text(json.dumps(stats, indent=2))
    return StageResult(
        counts={**{k: stats[k] for k in ("read", "kept", "dropped", "quarantined", "kept_by_source", "dropped_by_filter")},
                # who labelled, how well the classifier learnt it, what it dropped; not its timings:
                # the same input gives the same counts
                "quality": {k: quality[k] for k in QUALITY_COUNTS if k in quality}},
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
