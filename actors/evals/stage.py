"""Stage `eval`: score the model each stage produced on the verifiable suites, through the endpoint.

Every RUN/models/<stage> folder named in `eval.models` is served by the run's fleet, and the
suites go to each through the same HTTP API any user or lm-evaluation-harness would use. Models
of one engine shape form a lane (phi4ray.evals.models): one deployment serves them in turn,
swapping weights in place. Lanes run side by side behind one OpenAI ingress routing by model id.
In a pipeline run the lane ending on the newest model is the main fleet itself (PTS's, reused),
left serving it for `serve`.
Output:
- RUN/eval/suites/<suite>.jsonl: the built-in suites as the model sees them; user suites are
  read where they are (curation decontaminates against phi4ray.evals.files.decontam_files);
- RUN/eval/<stage>/<suite>.jsonl (one graded record per item, appended as graded: a rerun resumes)
  and RUN/eval/<stage>/summary.json; RUN/eval/summary.json across stages;
- RUN/report/eval_scores.png: accuracy with 95% intervals, per suite, after each stage;
- with `eval.lm_eval_tasks`: lm-evaluation-harness's own registry tasks, run on each model after
  its suites, while it is served: RUN/eval/<stage>/lm_eval.json (every metric of every filter per
  task) and RUN/eval/lm_eval.json across stages (a row per model, task and metric). A task that
  fails (its data set not on this machine, say) is recorded, every other task and model still
  runs, and then the stage fails naming it; a rerun keeps the grades and the finished tasks.
A stage's records are kept only while its model folder is unchanged (size and mtime of its files).
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import ray

from actors.run.cluster import SERVE_CPUS
from actors.serve.fleet import App, Fleet
from actors.serve.names import APP_NAME
from actors.serve.weights import model_shape
from phi4ray.evals.config import MODEL_STAGES
from phi4ray.evals.files import check_eval, eval_input_files, load_suites, suite_files
from phi4ray.evals.lm_eval_task import lm_eval_model
from phi4ray.evals.models import (
    deployments_that_fit,
    graded_dir,
    in_groups,
    lanes,
    model_fingerprint,
    split_main_lane,
    stage_models,
)
from phi4ray.evals.runner import SuiteResult, run_suites
from phi4ray.evals.schema import Suite
from phi4ray.evals.scores import (
    lm_eval_counts,
    lm_eval_lines,
    lm_eval_summary,
    plot_scores,
    score_lines,
    stage_counts,
    summarize,
    write_summary,
)
from phi4ray.run.console import say
from phi4ray.run.errors import UserError
from phi4ray.run.manifest import config_hash
from phi4ray.run.paths import latest_model
from phi4ray.run.stage import Stage, StageResult
from phi4ray.serve.endpoint import EndpointConfig, OpenAIEndpoint

NO_KEY_ENV = "PHI4RAY_EVAL_NO_KEY"  # our endpoint without an API key: send none (not the user's OpenAI key)
SIDE_APP = "phi4ray-eval"  # the app serving the lanes that are not the main fleet's


def lm_eval_tasks_on(url: str, model_id: str, folder: Path, out_dir: Path, e, api_key_env: str) -> dict:
    """`eval.lm_eval_tasks` on the model served as `model_id` (RUN/eval/<stage>/lm_eval.json).
    Synchronous, since the harness runs its own event loop: a lane calls it in a thread. Completion
    mode hands lm-eval the model folder's tokenizer (local), which loglikelihood tasks need."""
    chat = e.lm_eval_chat
    has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    return lm_eval_model(url, model_id, e.lm_eval_tasks, out_dir, include=e.lm_eval_include or None, chat=chat,
                         limit=e.lm_eval_limit or None, tokenizer=folder if has_tokenizer and not chat else None,
                         num_concurrent=e.concurrency, api_key_env=api_key_env)


async def evaluate_lanes(fleet: Fleet, placed: list[tuple[App, str, list[str]]], models: dict[str, Path],
                         labels: dict[str, str], suites: list[Suite], out_dirs: dict[str, Path], e,
                         api_key_env: str = NO_KEY_ENV,
                         lm_eval: dict[str, dict] | None = None) -> dict[str, list[SuiteResult]]:
    """All suites against every model: the lanes ([(app, served model id, [stage, ...])]) side by
    side, each lane's stages in turn with a weight swap between; {stage: [SuiteResult]}. With
    `eval.lm_eval_tasks`, each model's lm-eval record goes into `lm_eval` ({stage: record})."""
    results = {}

    async def lane(app: App, mid: str, stages: list[str]):
        cfg = EndpointConfig(base_url=app.url, model=mid, api_key_env=api_key_env, timeout_s=600,
                             max_concurrency=e.concurrency)
        for stage in stages:
            await asyncio.to_thread(fleet.swap, app, mid, str(models[stage]))  # no-op for the first
            async with OpenAIEndpoint(cfg) as endpoint:
                results[stage] = await run_suites(
                    endpoint, suites, out_dir=out_dirs[stage], mode=e.mode, max_tokens=e.max_tokens,
                    temperature=e.temperature, samples=e.samples, concurrency=e.concurrency, seed=e.seed,
                    model_label=labels[stage])
            if e.lm_eval_tasks and lm_eval is not None:  # before the swap: this model is the one served
                lm_eval[stage] = await asyncio.to_thread(lm_eval_tasks_on, app.url, mid, models[stage], out_dirs[stage],
                                                         e, api_key_env)

    await asyncio.gather(*(lane(*p) for p in placed))
    return results


def model_groups(ctx, lanes_or_stages: list) -> list[list]:
    """The lanes (or models) to serve together: all of them if the cluster has room now, else as
    many at a time as fit, so a small cluster evaluates in turns instead of waiting forever."""
    ctx.cluster.ensure(min_cpus=SERVE_CPUS)  # the one fleet.start would make; here first, to see what it has
    return in_groups(lanes_or_stages, deployments_that_fit(ray.available_resources(), ctx.cfg))


def place_lanes(ctx, group: list[list[str]], all_lanes: list[list[str]], models: dict[str, Path],
                newest: Path | None) -> list[tuple[App, str, list[str]]]:
    """Serve a group of lanes: [(app, model id, stages)]; the main lane on the main fleet."""
    model_id = ctx.cfg.serve.model_id
    main, side = split_main_lane(group, all_lanes, models, newest, model_id)
    placed = []
    if main:
        placed.append((ctx.fleet.start(str(models[main[0]])), model_id, main))
    if side:
        app = ctx.fleet.start({mid: str(models[lane[0]]) for mid, lane in side.items()}, app=SIDE_APP)
        placed += [(app, mid, lane) for mid, lane in side.items()]
    return placed


def record_lm_eval(run_dir: Path, e, stages: list[str], records: dict[str, dict]) -> tuple[dict, dict]:
    """RUN/eval/lm_eval.json across the models, its console lines, and the stage's (counts,
    outputs). A failed task fails the stage here, after every model and task ran and was
    recorded: not complete, so a rerun retries it (keeping the graded suites and finished tasks)."""
    path = Path(run_dir) / "eval" / "lm_eval.json"
    if not e.lm_eval_tasks:
        path.unlink(missing_ok=True)  # from an earlier config: the report must not show it
        return {}, {}
    lm = lm_eval_summary({s: records[s] for s in stages}, path)
    for line in lm_eval_lines(lm):
        say(f"  {line}")
    if lm["errors"]:
        failed: dict[str, list[str]] = {}
        for err in lm["errors"]:
            failed.setdefault(err["error"], []).append(err["model"])
        raise UserError(f"eval: {len(lm['errors'])} lm-eval task run(s) failed; the rest is recorded in {path} "
                        "(a rerun keeps the graded suites and finished tasks): "
                        + " | ".join(f"{msg} [model(s) {', '.join(ms)}]" for msg, ms in failed.items()))
    return lm_eval_counts(lm, e.lm_eval_tasks), {"lm_eval": str(path)}


def run(ctx) -> StageResult:
    run_dir, cfg = Path(ctx.run_dir), ctx.cfg
    e = cfg.eval
    models = stage_models(run_dir, cfg)
    fingerprints = {s: model_fingerprint(d) for s, d in models.items()}
    suites = load_suites(suite_files(run_dir, cfg))
    grading = {"suites": {s.name: s.version for s in suites}, "eval": config_hash(e.grading())}
    out_dirs = {s: graded_dir(run_dir, s, fp, grading) for s, fp in fingerprints.items()}
    labels = {s: f"{cfg.serve.model_id}-{s}" for s in models}  # the model named in the records
    all_lanes = lanes({s: model_shape(str(d)) for s, d in models.items()})
    newest = latest_model(run_dir).resolve() if ctx.cluster.holding else None
    results: dict[str, list[SuiteResult]] = {}
    lm_records: dict[str, dict] = {}
    t_ready = 0.0
    for group in model_groups(ctx, all_lanes):
        t1 = time.time()
        placed = place_lanes(ctx, group, all_lanes, models, newest)
        t_ready += time.time() - t1
        try:
            results |= asyncio.run(evaluate_lanes(ctx.fleet, placed, models, labels, suites, out_dirs, e,
                                                  api_key_env=cfg.serve.api_key_env or NO_KEY_ENV,
                                                  lm_eval=lm_records))
        finally:
            for app in {app.name: app for app, _, _ in placed}.values():
                ctx.fleet.release(app, keep=app.name == APP_NAME)  # the serve stage, next, uses it
    summary = summarize({s: results[s] for s in models})  # stage order
    summary_path = write_summary(summary, run_dir / "eval" / "summary.json")
    plot = plot_scores(summary, run_dir / "report" / "eval_scores.png")
    for line in score_lines(summary):
        say(f"  {line}")
    counts, outputs = record_lm_eval(run_dir, e, list(models), lm_records)
    return StageResult(counts=stage_counts(summary, suites) | counts,
                       outputs={"summary": str(summary_path), "plot": str(plot), **outputs},
                       inputs={"models": fingerprints, "suites": {s.name: s.version for s in suites}},
                       timings={"ready_s": round(t_ready, 1)})


STAGE = Stage(name="eval",
              summary="verifiable suites (math, choice, code, IFEval) against each stage's model on the endpoint",
              run=run, sections=("eval",), uses=MODEL_STAGES, outputs=("eval",),
              headline=("models", "suites", "items", "endpoint_errors", "lm_eval_tasks"), check=check_eval,
              files=eval_input_files)
