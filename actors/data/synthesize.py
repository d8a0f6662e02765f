"""Stage `synthesize`: seeds from RUN/curated -> synthesis steps on Ray Data -> RUN/synthetic.

The work (seeds, chunks, outputs, report) is phi4ray.data.synth.runner.synthesize on a runner; this
module is its Ray runner. Seed documents come from a Ray Data pass (`pick_documents`): one task per
file ranks its documents and keeps its first few per source, then a distributed sort + limit per
source keeps the candidates, and only those reach the driver. Chunks of seeds are rows of a Ray
Data pipeline, run by `ChunkActor`s (map_batches), each holding one teacher engine (the run's
sampler fleet or an external endpoint) and writing its chunk's rows to
RUN/synthesize/<step>/<chunk_id>.parquet.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pyarrow as pa

from phi4ray.data.synth.chunks import Chunk, process_chunk
from phi4ray.data.synth.runner import synthesize
from phi4ray.data.synth.seeds import check_questions_file, file_documents, pool_size, question_files, seed_files, top_documents
from phi4ray.data.synth.teacher import check_teacher, endpoint_engine, endpoint_spec, teacher_model, teacher_name
from phi4ray.run.console import progress
from phi4ray.run.stage import Stage, StageResult, all_checks

CANDIDATES = pa.schema([("source", pa.string()), ("doc_id", pa.string()), ("text", pa.string()), ("rank", pa.int64()),
                        ("score", pa.float64())])


def file_candidates(batch: pa.Table, root: str, seed: int, synth) -> pa.Table:
    """`map_batches` over file names: each file's first `pool_size` documents by rank, streamed
    from the file; no more than that leaves the task, whatever the file's size."""
    rows = [d for rel in batch.column("file").to_pylist()
            for docs in top_documents(file_documents(Path(root), rel, seed), synth).values() for d in docs]
    return pa.Table.from_pylist(rows, schema=CANDIDATES)


def pick_documents(run_dir: Path, cfg) -> tuple[str, dict[str, list[dict]]]:
    """phi4ray.data.synth.seeds.pick_documents on Ray Data: the same documents, whatever the blocks.
    Files are the read unit (a document without an id is `<file>:<row>`, so its row must be counted
    from the file's start); each source's candidates are the `pool_size` first of the files' picks
    by (score descending, rank, doc_id, text), a distributed sort + limit."""
    import ray.data  # deferred: the CLI imports this module to list stages without loading Ray
    from ray.data.expressions import col  # deferred: with ray.data, above

    origin, root, rels = seed_files(run_dir, cfg)
    ds = ray.data.from_items([{"file": r} for r in rels], override_num_blocks=len(rels))
    picks = ds.map_batches(file_candidates, batch_size=1, batch_format="pyarrow",
                           fn_kwargs={"root": str(root), "seed": cfg.seed, "synth": cfg.synth}).materialize()
    docs = {}
    for src in sorted({Path(r).parts[0] for r in rels}):
        # phi4ray.data.synth.seeds.order: the page score best first, then rank, doc_id, text
        rows = (picks.filter(expr=col("source") == src)
                .sort(["score", "rank", "doc_id", "text"], descending=[True, False, False, False])
                .limit(pool_size(src, cfg.synth)).take_all())
        if rows:  # a source of blank documents only offers none
            docs[src] = [{"source": src, "doc_id": r["doc_id"], "text": r["text"], "rank": int(r["rank"]),
                          "score": float(r["score"])}
                         for r in rows]
    return origin, docs


def build_engine(spec: dict):
    """The teacher engine an actor holds, from a picklable spec."""
    if spec["kind"] == "fleet":
        from actors.serve.fleet_engine import FleetEngine  # deferred: the sampler client stack, for a fleet teacher only

        return FleetEngine(spec["deployment"], spec["app"], seed=spec["seed"], model_dir=spec["folder"])
    return endpoint_engine(spec)


class ChunkActor:
    """`map_batches` actor: one teacher engine and one event loop for its life, one chunk per row.
    The loop outlives the chunks because an endpoint client binds to the loop it first runs on."""

    def __init__(self, spec: dict, synth, work: str):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.engine, self.s, self.work = build_engine(spec), synth, Path(work)

    def __call__(self, batch: pa.Table) -> pa.Table:
        done = [self.loop.run_until_complete(process_chunk(Chunk(r["step"], r["chunk_id"], json.loads(r["seeds"])),
                                                           self.engine, self.s, self.work))
                for r in batch.to_pylist()]
        return pa.Table.from_pylist(done)


class RayRunner:
    """Chunks on Ray Data actors against the teacher: an app of the run's fleet (started on first
    use, released by `close`), `app` (a running sampler app, used and left running), or the
    external endpoint."""

    def __init__(self, ctx, app=None):
        self.ctx, self.app, self.started, self.ready_s = ctx, app, None, None
        self.name = teacher_name(ctx.run_dir, ctx.cfg)

    def pick_documents(self, run_dir: Path, cfg) -> tuple[str, dict[str, list[dict]]]:
        return pick_documents(run_dir, cfg)

    def spec(self) -> dict:
        cfg = self.ctx.cfg
        if cfg.synth.teacher == "endpoint":
            return endpoint_spec(cfg)
        if self.app is None:
            t0 = time.time()
            self.app = self.started = self.ctx.fleet.start(str(teacher_model(self.ctx.run_dir, cfg)))
            self.ready_s = round(time.time() - t0, 1)
        return {"kind": "fleet", "deployment": self.app.deployment, "app": self.app.name, "seed": cfg.seed,
                "folder": self.app.folders.get(self.app.model_id)}

    def run(self, chunks: list[Chunk], s, work: Path) -> None:
        import ray.data  # deferred: the CLI imports this module to list stages without loading Ray

        items = [{"step": c.step, "chunk_id": c.chunk_id, "seeds": json.dumps(c.seeds)} for c in chunks]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        # one chunk queued per actor: a chunk waits for whichever actor frees up first, not behind
        # a slow chunk; pyarrow batches: numpy ones come back as tensor columns pyarrow cannot read
        pool = ray.data.ActorPoolStrategy(size=min(s.actors, len(items)), max_tasks_in_flight_per_actor=1)
        ds = ds.map_batches(ChunkActor, batch_format="pyarrow", batch_size=1, compute=pool, num_cpus=s.actor_cpus,
                            fn_constructor_kwargs={"spec": self.spec(), "synth": s, "work": str(work)})
        for r in progress(len(items), "synthesize chunks", "chunk", ds.iter_rows()):
            print(f"synthesize: {r['step']} chunk {r['chunk_id']}: {r['seeds']} seeds -> {r['rows']} rows "
                  f"in {r['wall_s']}s", flush=True)

    def timings(self) -> dict:
        return {} if self.ready_s is None else {"fleet_ready_s": self.ready_s}

    def close(self) -> None:
        if self.started:
            # the teacher is the run's early model: no later stage serves it, and a replica left up
            # would hold what the training stages after this one need
            self.ctx.fleet.release(self.started, keep=False)
            self.started = None


def run(ctx, app=None) -> StageResult:
    """The stage on Ray. `app`: a running sampler app (actors.serve.fleet.App) to use as the teacher and
    leave running; without it the stage serves the teacher model itself, or calls the endpoint."""
    runner = RayRunner(ctx, app)
    with ctx.cluster.session(min_cpus=8):  # the fleet's replica and ingress each reserve a CPU, like serve's
        try:
            return synthesize(ctx.run_dir, ctx.cfg, runner)
        finally:
            runner.close()


STAGE = Stage(
    name="synthesize",
    summary="synthetic data: rewrites, self-revision, instruction reversal, sandboxed code, plurality filter, "
            "verified toy problems, long-context rows from QA pairs",
    run=run,
    # synth: the steps and the teacher; seed: chunk ids and the arithmetic seeds; arith: those
    # problems and the toy source's (synth.toy_problems); data.builtin_max_docs: the seed documents
    # when nothing is curated; data.seq_len, midtrain.context_multiplier: the long rows' sizes
    sections=("synth", "seed", "arith", "data.builtin_max_docs", "data.seq_len", "midtrain.context_multiplier"),
    # curate: the seed documents (the built-in corpus otherwise); init: the default teacher is the
    # run's newest model (check_teacher refuses a fleet teacher without one before Ray starts)
    uses=("curate", "init"),
    files=question_files,
    check=all_checks(check_questions_file, check_teacher),
    outputs=("synthetic/web_rewrites", "synthetic/synthetic", "synthetic/long", "synthesize/dropped",
             "synthesize/report.json", "synthesize/<step>/<chunk_id>.parquet", "synthesize/quarantine_questions.jsonl"),
    headline=("seeds", "kept", "dropped"),
)
