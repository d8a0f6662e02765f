"""Stage `tokenize`: the weighted source mixture, tokenized and packed on Ray Data workers.

    input files --(per file: TokenizeFiles actors)--> RUN/tokenized/<file key>.parquet + counts
    driver: counts per source -> mixture plan -> pack groups (consecutive files of a source)
    groups --(per group: pack_groups tasks)--> RUN/tokens/shard-SS-GGGGG-PPPP.parquet
                                               (tokens list<int32>, doc_ids list<int32>, source string)

The mixture (phi4ray.data.mixtures) is the run's curated and synthetic data, or the built-in corpus
while the run has none. Midtraining tokenizes its own mixture (long + recall) the same way into
RUN/tokens_midtrain (`tokenize_mixture`), reusing RUN/tokenized for files pretraining already read.

The driver holds counts per input file and per pack group, and the plan; token ids stay on the
workers and in files (phi4ray.data.token_shards has the two passes and what bounds their memory).
Rows whose `text` is null, not a string or blank are counted as quarantined, never a crash.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pyarrow as pa

from phi4ray.data.mixtures import pretrain_mixture, source_files
from phi4ray.data.packing import MixtureConfig, mixture_plan
from phi4ray.data.token_shards import (
    check_source,
    docs_file,
    finish_output,
    group_target,
    input_key,
    mixture_counts,
    pack_group,
    pack_groups,
    read_record,
    source_counts,
    source_stats,
    start_output,
    tokenize_file,
)
from phi4ray.model.tokenizer import tokenizer_for
from phi4ray.run.stage import Stage, StageResult

JSON_ROWS = pa.schema([("json", pa.string())])


class TokenizeFiles:
    """`map_batches` actor over input files: loads the tokenizer once, tokenizes each file (pass 1)
    and measures it for every source that reads it."""

    def __init__(self, mix: MixtureConfig, cache: str):
        self.tok, self.mix, self.cache = tokenizer_for(mix.tokenizer), mix, Path(cache)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for item in batch.to_pylist():
            summary = tokenize_file(item["path"], self.cache, self.tok)
            docs = docs_file(self.cache, item["path"])
            stats = {i: source_stats(docs, self.mix.sources[i]) for i in json.loads(item["sources"])}
            out.append(json.dumps({"path": item["path"], "summary": summary, "stats": stats}))
        return pa.table({"json": out}, schema=JSON_ROWS)


def _pack(batch: pa.Table, mix: MixtureConfig, out: str) -> pa.Table:
    done = [json.dumps(pack_group(json.loads(t), mix, Path(out))) for t in batch.column("task").to_pylist()]
    return pa.table({"json": done}, schema=JSON_ROWS)


def _run(items: list[dict], fn, actors: int, **kw) -> list[dict]:
    """One Ray Data pass, one item per batch: returns each item's JSON result (O(items) small dicts)."""
    import ray.data  # deferred: a reused record needs no Ray

    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        fn, batch_size=1, batch_format="pyarrow", concurrency=max(1, min(actors, len(items))), **kw)
    return [json.loads(r["json"]) for r in ds.take_all()]


def _result(record: dict) -> StageResult:
    return StageResult(counts=record["counts"], outputs=record["outputs"], inputs=record["inputs"],
                       timings=record["timings"])


def tokenize_mixture(run_dir: str | Path, mix: MixtureConfig, cluster, *, out_name: str = "tokens",
                     actors: int | None = None) -> StageResult:
    """Tokenize, sample, pack and shard `mix` into RUN/<out_name> on `cluster` (a RayCluster).

    The output folder's record (phi4ray.data.token_shards) makes a rerun over the same mixture and the
    same input files a no-op that returns the first result. `actors` caps the workers of each pass
    (default: the CPUs Ray Data may use); it does not change the output. A file read by several
    sources is tokenized once. A source with `min_tokens` that keeps no document fails, naming the
    threshold and the longest document it saw."""
    run_dir = Path(run_dir)
    out = run_dir / out_name
    t0 = time.time()
    files = {s.name: source_files(run_dir, s) for s in mix.sources}  # fail on bad inputs first
    key = input_key(mix, files)
    done = read_record(out, key)
    if done is not None:
        return _result(done)
    readers: dict[str, list[int]] = {}  # file -> indices of the sources reading it, in file order
    for i, s in enumerate(mix.sources):
        for f in files[s.name]:
            readers.setdefault(f, []).append(i)
    cache = run_dir / "tokenized" / tokenizer_for(mix.tokenizer).identity  # token ids are per vocabulary
    with cluster.session():
        actors = actors or max(1, cluster.data_cpus())
        measured = {r["path"]: r for r in _run(
            [{"path": f, "sources": json.dumps(ix)} for f, ix in sorted(readers.items())], TokenizeFiles, actors,
            fn_constructor_kwargs={"mix": mix, "cache": str(cache)})}
        t_tok = time.time() - t0
        counts, available, per_file = {}, {}, {}
        for i, s in enumerate(mix.sources):
            stats = [measured[f]["stats"][str(i)] for f in files[s.name]]
            check_source(s, stats)
            counts[s.name] = source_counts([measured[f]["summary"] for f in files[s.name]], stats)
            per_file[s.name] = [st["available"] for st in stats]
            available[s.name] = int(round(sum(per_file[s.name])))
            counts[s.name]["docs_upweighted"] = sum(st["upweighted"] for st in stats)
        plan = mixture_plan(available, mix, mix.total_tokens)
        tasks = []
        for i, s in enumerate(mix.sources):
            for g, members in enumerate(pack_groups(files[s.name], per_file[s.name], plan[s.name], group_target(mix))):
                tasks.append({"source_index": i, "group": g, "epochs": plan[s.name],
                              "docs": [str(docs_file(cache, files[s.name][m])) for m in members]})
        tmp = start_output(out)
        packed = _run([{"task": json.dumps(t)} for t in tasks], _pack, actors,
                      fn_kwargs={"mix": mix, "out": str(tmp)})
    t_pack = time.time() - t0 - t_tok
    shards = sorted(n for p in packed for n in p["shards"])
    for s in mix.sources:
        mine = [p for p in packed if p["source"] == s.name]
        counts[s.name].update({"tokens_available": available[s.name], "epochs_planned": round(plan[s.name], 6),
                               **{k: sum(p[k] for p in mine) for k in ("docs_sampled", "tokens_sampled",
                                                                     "tokens_packed", "tokens_dropped", "sequences")}})
    record = {"key": key, "inputs": {"mixture": dataclasses.asdict(mix), "files": files},
              "outputs": {out_name: str(out), "shards": shards},
              "counts": mixture_counts(mix, counts, plan, available, len(tasks), len(shards)),
              "timings": {"tokenize_s": round(t_tok, 2), "pack_s": round(t_pack, 2)}}
    return _result(finish_output(tmp, out, record))


def run(ctx) -> StageResult:
    return tokenize_mixture(ctx.run_dir, pretrain_mixture(ctx.run_dir, ctx.cfg), ctx.cluster)


STAGE = Stage(
    name="tokenize",
    summary="tokenize and pack the weighted source mixture into token shards (Ray Data)",
    run=run,
    sections=("data", "seed"),
    uses=("curate", "synthesize"),  # the built-in corpus when neither is complete
    outputs=("tokens",),
    headline=("sequences", "tokens_packed"),
)
