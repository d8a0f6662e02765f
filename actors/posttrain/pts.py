"""Stage `pts`: Pivotal Token Search actors querying the Serve sampler fleet in parallel.

The driver serves the SFT model on the fleet, hands queries to `PTSActor`s one call per query
(async actors, so each holds many queries in flight; a semaphore bounds its sampling calls), and
appends every finished query to RUN/pts/queries.jsonl as it arrives. That file is the resume
point: a rerun skips the query ids already in it, so a crash costs the queries in flight, never
a finished one, and no query is counted twice. Sampling calls have no side effects, so a sampler
replica dying costs retries (FleetSampler) and a PTS actor dying costs a restart and a retried
call (max_restarts / max_task_retries).

Outputs: RUN/pts/queries.jsonl, RUN/pts/pairs/pairs.parquet (token ids for the DPO trainer plus texts for reading,
p estimates, query and model ids), RUN/pts/report.json and RUN/report/pts_p_query.png.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import ray

from actors.serve.sampler_client import FleetSampler
from phi4ray.model.tokenizer import tokenizer_for
from phi4ray.posttrain.pts import plot_p_query, query_record, search_query, search_report, write_pairs
from phi4ray.posttrain.queries import check_queries_file, pts_queries, query_files, query_oracle
from phi4ray.run.console import progress, say
from phi4ray.run.manifest import read_checkpoint_lines
from phi4ray.run.stage import Stage, StageResult, stage_key


class BoundedSampler:
    """At most `limit` sampling calls in flight from this actor, however many queries it holds."""

    def __init__(self, sampler, limit: int):
        self.sampler, self.sem = sampler, asyncio.Semaphore(limit)

    async def sample(self, request):
        async with self.sem:
            return await self.sampler.sample(request)


@ray.remote(max_restarts=-1, max_task_retries=3)
class PTSActor:
    def __init__(self, deployment: str, app: str, cfg, model_id: str, oracle_for=query_oracle,
                 seed: int | None = None, model_dir: str | None = None):
        self.cfg, self.model_id, self.oracle_for = cfg, model_id, oracle_for
        self.tok = tokenizer_for(model_dir)  # the searched model's (None: Phi-4's)
        # seeded per prompt: a call retried on another replica samples what the lost one would have
        self.sampler = BoundedSampler(FleetSampler(deployment, app, seed=seed), cfg.concurrency)

    async def search(self, query: dict) -> dict:
        query_ids = self.tok.render_prompt(query["question"])
        t0 = time.perf_counter()
        res = await search_query(self.sampler, self.oracle_for(query, self.tok), query_ids, self.cfg,
                                 stop_ids=(self.tok.end_turn_id,))
        return query_record(query, query_ids, res, self.model_id, time.perf_counter() - t0, self.tok)


def run_search(queries: list[dict], out_dir: Path, deployment: str, app: str, cfg, model_id: str,
               oracle_for=query_oracle, key: str = "", seed: int | None = None,
               model_dir: str | None = None) -> list[dict]:
    """Search every query not yet in out_dir/queries.jsonl under `key` (the stage's key: a record
    made under another config is not a result of this one); returns all results (old and new).
    `oracle_for(query, tokenizer) -> oracle(solution_ids) -> bool` (default: the query's own kind,
    phi4ray.posttrain.queries); `model_dir` is the searched model's folder (its tokenizer).
    With `seed`, each sampling call's seed is derived from (seed, prompt ids) (FleetSampler): a
    replica lost mid-search or a resumed run changes no result."""
    done_file = out_dir / "queries.jsonl"
    done = read_checkpoint_lines(done_file, keep=lambda r: r.get("key", "") == key)
    todo = [q for q in queries if q["id"] not in done]
    if todo:
        n = min(cfg.actors, len(todo))
        actors = [PTSActor.options(num_cpus=0).remote(deployment, app, cfg, model_id, oracle_for, seed, model_dir)
                  for _ in range(n)]
        pending = {actors[i % n].search.remote(q): q["id"] for i, q in enumerate(todo)}
        with open(done_file, "a") as f, progress(len(queries), "pts queries", "query") as bar:
            bar.update(len(done))
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                r = {**ray.get(ready[0]), "key": key}
                pending.pop(ready[0])
                if r["query_id"] not in done:
                    f.write(json.dumps(r) + "\n")
                    f.flush()
                    done[r["query_id"]] = r
                    bar.update(1)
                    print(f"pts: {len(done)}/{len(queries)} queries; {r['query_id']} p={r['p_query']:.2f} "
                          f"pairs={len(r['pairs'])}", flush=True)
        for a in actors:
            ray.kill(a)
    return [done[q["id"]] for q in queries if q["id"] in done]


def run(ctx) -> StageResult:
    run_dir, cfg = ctx.run_dir, ctx.cfg
    model_dir = run_dir / "models" / "sft"
    out = run_dir / "pts"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    queries, read = pts_queries(cfg, out)  # a bad file fails here, before an engine starts
    # records of another config (or query file, or model) in queries.jsonl are not this run's
    key = stage_key(STAGE, cfg, run_dir, ctx.options)
    app = ctx.fleet.start(str(model_dir))
    t_ready = time.time() - t0
    try:
        results = run_search(queries, out, app.deployment, app.name, cfg.pts, str(model_dir), key=key,
                             seed=cfg.seed, model_dir=str(model_dir))
    finally:
        # eval serves this model shape on this fleet next; on CPU the idle replica through DPO
        # costs memory only, on GPU it would hold a GPU the DPO trainer needs
        ctx.fleet.release(app, keep=ctx.cluster.holding and cfg.serve.device == "cpu")
    n_pairs = write_pairs(results, out / "pairs")
    report = {**search_report(results, cfg.pts), "input": read, "wall_s": round(time.time() - t0, 1),
              "fleet_ready_s": round(t_ready, 1)}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot_p_query(results, cfg.pts, run_dir / "report" / "pts_p_query.png")
    say(f"pts: {report['kept']}/{report['queries']} queries kept, {report['pivots']} pivots, {n_pairs} pairs, "
          f"{report['samples']} samples")
    return StageResult(counts=report, inputs={"model": str(model_dir)},
                       outputs={"pairs": str(out / "pairs"), "report": str(out / "report.json")},
                       timings={"wall_s": report["wall_s"], "fleet_ready_s": report["fleet_ready_s"]})


STAGE = Stage(
    name="pts",
    summary="Pivotal Token Search against the Serve samplers -> token-level DPO pairs",
    run=run,
    sections=("pts", "arith", "seed"),
    reads=("sft",),
    outputs=("pts", "report/pts_p_query.png"),
    files=query_files,
    check=check_queries_file,
    headline=("queries", "kept", "pivots", "pairs", "samples"),
)
