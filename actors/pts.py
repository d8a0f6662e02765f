"""Stage `pts`: Pivotal Token Search actors querying the Serve sampler fleet in parallel.

The driver serves the SFT model on the fleet, hands queries to `PTSActor`s one call per query
(async actors, so each holds many queries in flight; a semaphore bounds its sampling calls), and
appends every finished query to RUN/pts/queries.jsonl as it arrives. That file is the resume
point: a rerun skips the query ids already in it, so a crash costs the queries in flight, never
a finished one, and no query is counted twice. Sampling calls have no side effects, so a sampler
replica dying costs retries (FleetSampler) and a PTS actor dying costs a restart and a retried
call (max_restarts / max_task_retries).

With `dpo.judge_prompts > 0` the stage also makes DPO round 2's judge-guided full pairs while the
fleet is up (actors/judge.py -> RUN/dpo/pairs_full).

Outputs: RUN/pts/pairs/pairs.parquet (token ids for the DPO trainer plus texts for reading,
p estimates, query and model ids), RUN/pts/report.json and RUN/report/pts_p_query.png.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import ray


class BoundedSampler:
    """At most `limit` sampling calls in flight from this actor, however many queries it holds."""

    def __init__(self, sampler, limit: int):
        self.sampler, self.sem = sampler, asyncio.Semaphore(limit)

    async def sample(self, request):
        async with self.sem:
            return await self.sampler.sample(request)


def answer_oracle(query: dict):
    """The default oracle: the toy domain's answer check (the math oracle, or primality) on the
    decoded solution against query["answer"] (decoded only to read the final answer; the search
    itself stays in token ids)."""
    from phi4ray.arith import check_answer
    from phi4ray.tokenizer import get_tokenizer

    tok = get_tokenizer()

    def oracle(ids: list[int]) -> bool:
        return check_answer(tok.decode([t for t in ids if t < tok.eot_id]), query["answer"])
    return oracle


@ray.remote(max_restarts=-1, max_task_retries=3)
class PTSActor:
    def __init__(self, deployment: str, app: str, cfg, model_id: str, oracle_for=answer_oracle):
        from actors.sampler_client import FleetSampler
        from phi4ray.tokenizer import get_tokenizer

        self.cfg, self.model_id, self.oracle_for = cfg, model_id, oracle_for
        self.tok = get_tokenizer()
        self.sampler = BoundedSampler(FleetSampler(deployment, app), cfg.concurrency)

    async def search(self, query: dict) -> dict:
        from phi4ray.pts import search_query
        from phi4ray.tokenizer import IM_END

        tok = self.tok
        query_ids = tok.render_chat([{"role": "user", "content": query["question"]}], add_generation_prompt=True).ids
        t0 = time.perf_counter()
        res = await search_query(self.sampler, self.oracle_for(query), query_ids, self.cfg,
                                 stop_ids=(IM_END,))
        pairs = [{
            "pair_id": f"{query['id']}:{p.position}:{p.chosen}:{p.rejected}", "query_id": query["id"],
            "model_id": self.model_id, "prompt_ids": query_ids + p.prefix, "chosen_ids": [p.chosen],
            "rejected_ids": [p.rejected], "prompt_text": tok.decode(query_ids + p.prefix),
            "chosen_text": tok.decode([p.chosen]), "rejected_text": tok.decode([p.rejected]),
            "position": p.position, "p_query": res.p_query, "p_before": p.p_before, "p_after": p.p_after,
            "p_chosen": p.p_chosen, "p_rejected": p.p_rejected} for p in res.pairs]
        return {"query_id": query["id"], "p_query": res.p_query, "kept": res.kept, "pivots": res.pivots,
                "no_alternative": res.no_alternative, "samples": res.samples, "estimates": res.estimates,
                "wall_s": time.perf_counter() - t0, "pairs": pairs}


def pts_queries(cfg) -> list[dict]:
    """The toy domain's training questions (held-out ones stay for evaluation)."""
    from phi4ray.arith import make_problems

    return make_problems(cfg.pts.queries, cfg.seed + 1, cfg.arith)


def run_search(queries: list[dict], out_dir: Path, deployment: str, app: str, cfg, model_id: str,
               oracle_for=answer_oracle) -> list[dict]:
    """Search every query not yet in out_dir/queries.jsonl; returns all results (old and new).
    `oracle_for(query) -> oracle(solution_ids) -> bool` (default: the math answer oracle)."""
    from phi4ray.manifest import read_checkpoint_lines

    done_file = out_dir / "queries.jsonl"
    done = read_checkpoint_lines(done_file)
    todo = [q for q in queries if q["id"] not in done]
    if todo:
        n = min(cfg.actors, len(todo))
        actors = [PTSActor.options(num_cpus=0).remote(deployment, app, cfg, model_id, oracle_for) for _ in range(n)]
        pending = {actors[i % n].search.remote(q): q["id"] for i, q in enumerate(todo)}
        with open(done_file, "a") as f:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                r = ray.get(ready[0])
                pending.pop(ready[0])
                if r["query_id"] not in done:
                    f.write(json.dumps(r) + "\n")
                    f.flush()
                    done[r["query_id"]] = r
                    print(f"pts: {len(done)}/{len(queries)} queries; {r['query_id']} p={r['p_query']:.2f} "
                          f"pairs={len(r['pairs'])}", flush=True)
        for a in actors:
            ray.kill(a)
    return [done[q["id"]] for q in queries if q["id"] in done]


def search_report(results: list[dict], pts) -> dict:
    """The search's funnel and cost; queries = kept + too_hard + too_easy (pts: PTSConfig)."""
    kept = [r for r in results if r["kept"]]
    pivots = sum(r["pivots"] for r in results)
    samples = sum(r["samples"] for r in results)
    return {"queries": len(results), "kept": len(kept),
            "too_hard": sum(r["p_query"] < pts.p_min for r in results),
            "too_easy": sum(r["p_query"] > pts.p_max for r in results),
            "pivots": pivots, "pairs": sum(len(r["pairs"]) for r in results),
            "pivots_without_alternative": sum(r["no_alternative"] for r in results),
            "samples": samples, "p_estimates": sum(r["estimates"] for r in results),
            "samples_per_pivot": samples / pivots if pivots else None,
            "mean_p_query": sum(r["p_query"] for r in results) / max(1, len(results))}


def _write_pairs(results: list[dict], out: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [p for r in results for p in r["pairs"]]
    out.mkdir(parents=True, exist_ok=True)
    if rows:
        pq.write_table(pa.Table.from_pylist(rows), out / "pairs.parquet")
    return len(rows)


def _plot_p(results: list[dict], cfg, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist([r["p_query"] for r in results], bins=20, range=(0, 1))
    for x in (cfg.pts.p_min, cfg.pts.p_max):
        ax.axvline(x, color="k", ls="--")
    ax.set(xlabel="p(success | query)", ylabel="queries", title="PTS: queries kept between the lines")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def judge_round(run_dir: Path, cfg, info: dict) -> dict:
    """DPO round 2: `dpo.judge_responses` responses per toy-domain question from the fleet's
    policy, scored by the judge (accuracy from the math oracle where the answer is known)."""
    from actors.judge import EndpointJudge, FleetJudge, FleetPolicy, build_judged_pairs
    from phi4ray.arith import check_answer, make_problems
    from phi4ray.endpoint import EndpointConfig

    d = cfg.dpo
    prompts = make_problems(d.judge_prompts, cfg.seed + 2, cfg.arith)
    policy = FleetPolicy(model_id="sft", deployment=info["deployment"], app=info["app"], n=d.judge_responses,
                         max_tokens=cfg.pts.max_tokens)
    judge = (EndpointJudge(EndpointConfig(d.judge_url, d.judge_model, api_key_env=d.judge_api_key_env))
             if d.judge_url else FleetJudge(deployment=info["deployment"], app=info["app"]))
    report = build_judged_pairs(prompts, [policy], judge, Path(run_dir) / "dpo" / "pairs_full",
                                concurrency=cfg.pts.concurrency, oracle=check_answer)
    print(f"pts: judge round: {report['pairs']} pairs from {report['prompts_in']} prompts; "
          f"no pair: {report['no_pair']}")
    return report


def run_pts(run_dir: Path, cfg) -> dict:
    from actors.serve_stage import release, start
    from phi4ray import manifest

    run_dir = Path(run_dir).resolve()
    if manifest.is_complete(run_dir, "pts", cfg):
        return manifest.read_manifest(run_dir, "pts")
    model_dir = run_dir / "models" / "sft"
    out = run_dir / "pts"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    info = start(str(model_dir), cfg)
    t_ready = time.time() - t0
    try:
        results = run_search(pts_queries(cfg), out, info["deployment"], info["app"], cfg.pts, str(model_dir))
        judged = judge_round(run_dir, cfg, info) if cfg.dpo.judge_prompts else None
    finally:
        # eval serves this model shape on this fleet next; on CPU the idle replica through DPO
        # costs memory only, on GPU it would hold a GPU the DPO trainer needs
        release(info, keep=cfg.serve.device == "cpu")
    n_pairs = _write_pairs(results, out / "pairs")
    report = {**search_report(results, cfg.pts), "wall_s": round(time.time() - t0, 1), "fleet_ready_s": round(t_ready, 1)}
    if judged is not None:
        report["judge_round"] = {k: judged.get(k) for k in ("prompts_in", "pairs", "no_pair", "acceptance_rate")}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _plot_p(results, cfg, run_dir / "report" / "pts_p_query.png")
    print(f"pts: {report['kept']}/{report['queries']} queries kept, {report['pivots']} pivots, {n_pairs} pairs, "
          f"{report['samples']} samples")
    manifest.write_manifest(run_dir, "pts", cfg, inputs={"model": str(model_dir)},
                            outputs={"pairs": str(out / "pairs"), "report": str(out / "report.json")},
                            counts=report, timings={"wall_s": report["wall_s"]})
    return manifest.read_manifest(run_dir, "pts")
