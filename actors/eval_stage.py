"""Stage `eval`: score the model each stage produced on the verifiable suites, through the endpoint.

Every RUN/models/<stage> folder named in `eval.models` is served on one Serve app, and the suites
go to each through the same HTTP API any user or lm-evaluation-harness would use. Models of one
engine shape (weights differ, config does not: init and pretrain; midtrain, SFT and DPO share
midtraining's RoPE base) form a lane: one vLLM deployment serves them in turn, swapping weights in
place (actors/weights.py), since an engine start costs far more than a reload. Lanes run side by
side, one deployment each behind one OpenAI ingress routing by model id. In a pipeline run the lane
ending on the newest model is the main fleet itself (PTS's, reused), left serving it for `serve`.
Output:
- RUN/eval/suites/<suite>.jsonl: the built-in suites as the model sees them (curation
  decontaminates against exactly these files), user suites are read where they are;
- RUN/eval/<stage>/<suite>.jsonl (one graded record per item, appended as graded: a rerun resumes)
  and RUN/eval/<stage>/summary.json; RUN/eval/summary.json across stages;
- RUN/report/eval_scores.png: accuracy with 95% intervals, per suite, after each stage.
A stage's records are kept only while its model folder is unchanged (size and mtime of its files).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from pathlib import Path

from phi4ray import manifest
from phi4ray.evals.suites import Suite, builtin_suites, load_suite_jsonl, write_suite_jsonl

STAGE = "eval"
NO_KEY_ENV = "PHI4RAY_EVAL_NO_KEY"  # our endpoint without an API key: send none (not the user's OpenAI key)


def suite_files(run_dir: Path, cfg) -> list[Path]:
    """The suites as files: the built-in ones (re-)written under RUN/eval/suites, then the user's."""
    e = cfg.eval
    out = Path(run_dir) / "eval" / "suites"
    paths = [write_suite_jsonl(s, out / f"{s.name}.jsonl") for s in builtin_suites(e.seed, e.size, e.suites)]
    return paths + [Path(f) for f in e.files]


def load_suites(paths: list[Path]) -> list[Suite]:
    suites = [load_suite_jsonl(p) for p in paths]
    names = [s.name for s in suites]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"eval: suite name(s) {dup} given twice (a user file named like a built-in suite?)")
    return suites


def model_fingerprint(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    blob = json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _stage_dir(run_dir: Path, stage: str, fingerprint: str) -> Path:
    """RUN/eval/<stage>, emptied when the model it graded has changed since."""
    d = run_dir / "eval" / stage
    marker = d / "model.json"
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") != fingerprint:
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"fingerprint": fingerprint}))
    return d


def lanes(models: dict[str, Path]) -> list[list[str]]:
    """Stages grouped by engine shape, in stage order: each lane is served by one deployment."""
    from actors.weights import model_shape

    out: dict[str, list[str]] = {}
    for stage, folder in models.items():
        out.setdefault(json.dumps(model_shape(str(folder)), sort_keys=True), []).append(stage)
    return list(out.values())


async def evaluate_lanes(placed: list[tuple[dict, str, list[str]]], models: dict[str, Path],
                         labels: dict[str, str], suites: list[Suite], out_dirs: dict[str, Path], e,
                         api_key_env: str = NO_KEY_ENV) -> dict[str, list]:
    """All suites against every model: the lanes ([(app info, served model id, [stage, ...])]) side
    by side, each lane's stages in turn with a weight swap between; {stage: [SuiteResult]}."""
    from actors.serve_stage import swap
    from phi4ray.endpoint import EndpointConfig, OpenAIEndpoint
    from phi4ray.evals.runner import run_suites

    results = {}

    async def lane(info: dict, mid: str, stages: list[str]):
        cfg = EndpointConfig(base_url=info["url"], model=mid, api_key_env=api_key_env, timeout_s=600,
                             max_concurrency=e.concurrency)
        for stage in stages:
            await asyncio.to_thread(swap, info, mid, str(models[stage]))  # no-op for the first
            async with OpenAIEndpoint(cfg) as endpoint:
                results[stage] = await run_suites(
                    endpoint, suites, out_dir=out_dirs[stage], mode=e.mode, max_tokens=e.max_tokens,
                    temperature=e.temperature, samples=e.samples, concurrency=e.concurrency, seed=e.seed,
                    model_label=labels[stage])

    await asyncio.gather(*(lane(*p) for p in placed))
    return results


def plot_scores(summary: dict[str, dict[str, dict]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(summary)
    suites = sorted({s for per in summary.values() for s in per})
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(suites) * max(1, len(stages)) / 3, 3.6))
    width = 0.8 / max(1, len(stages))
    for i, stage in enumerate(stages):
        xs, ys, lo, hi = [], [], [], []
        for j, suite in enumerate(suites):
            r = summary[stage].get(suite)
            if not r or r["accuracy"] is None:
                continue
            xs.append(j + (i - (len(stages) - 1) / 2) * width)
            ys.append(r["accuracy"])
            lo.append(r["accuracy"] - r["ci_low"])
            hi.append(r["ci_high"] - r["accuracy"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=stage)
    ax.set_xticks(range(len(suites)), suites)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_title("evaluation after each stage")
    ax.legend(fontsize=7, ncol=len(stages))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def model_groups(stages: list, cfg) -> list[list]:
    """The models (or lanes) to serve together: all of them if the cluster has room now, else as
    many at a time as fit (a CPU deployment takes 2 logical CPUs: its replica and its engine's
    bundle; a GPU one a GPU), so a small cluster evaluates in turns instead of waiting forever."""
    import ray

    from actors.ray_session import SERVE_CPUS, ensure_ray

    ensure_ray(min_cpus=SERVE_CPUS)  # the one start() would make; here first, to see what it has
    free = ray.available_resources()
    if cfg.eval.models_at_once:
        fit = cfg.eval.models_at_once
    elif cfg.serve.device == "gpu":
        fit = int(free.get("GPU", 0))
    else:
        fit = int(free.get("CPU", 0) - 1) // 2  # one CPU for the ingress
    fit = max(1, fit)
    return [stages[i:i + fit] for i in range(0, len(stages), fit)]


def place_lanes(group: list[list[str]], all_lanes: list[list[str]], models: dict[str, Path], cfg,
                newest: Path | None) -> list[tuple[dict, str, list[str]]]:
    """Serve a group of lanes: [(app info, model id, stages)]. The lane ending on `newest` (set in
    a pipeline run) goes on the main fleet under serve.model_id, where the serve stage that comes
    next finds it up and serving that model; the rest share the `phi4ray-eval` app."""
    from actors.serve_stage import start

    main = next((lane for lane in group if newest and models[lane[-1]].resolve() == newest), None)
    side = {f"{cfg.serve.model_id}-eval-{all_lanes.index(lane)}": lane for lane in group if lane is not main}
    placed = []
    if main:
        placed.append((start(str(models[main[0]]), cfg), cfg.serve.model_id, main))
    if side:
        info = start({mid: str(models[lane[0]]) for mid, lane in side.items()}, cfg, app="phi4ray-eval")
        placed += [(info, mid, lane) for mid, lane in side.items()]
    return placed


def run_eval(run_dir: Path, cfg) -> dict:
    from actors.ray_session import holding
    from actors.serve_app import APP_NAME
    from actors.serve_stage import latest_model, release

    run_dir = Path(run_dir)
    e = cfg.eval
    models = {s: run_dir / "models" / s for s in e.models if (run_dir / "models" / s / "config.json").is_file()}
    if not models:
        raise FileNotFoundError(f"{run_dir}/models: none of eval.models={list(e.models)} exists yet")
    fingerprints = {s: model_fingerprint(d) for s, d in models.items()}
    done = manifest.read_manifest(run_dir, STAGE)
    if done and manifest.is_complete(run_dir, STAGE, cfg) and done["inputs"].get("models") == fingerprints:
        return done
    t0 = time.time()
    suites = load_suites(suite_files(run_dir, cfg))
    out_dirs = {s: _stage_dir(run_dir, s, fp) for s, fp in fingerprints.items()}
    labels = {s: f"{cfg.serve.model_id}-{s}" for s in models}  # the model named in the records
    all_lanes = lanes(models)
    newest = latest_model(run_dir).resolve() if holding() else None
    results, t_ready = {}, 0.0
    for group in model_groups(all_lanes, cfg):
        t1 = time.time()
        placed = place_lanes(group, all_lanes, models, cfg, newest)
        t_ready += time.time() - t1
        try:
            results |= asyncio.run(evaluate_lanes(placed, models, labels, suites, out_dirs, e,
                                                  api_key_env=cfg.serve.api_key_env or NO_KEY_ENV))
        finally:
            for info in {info["app"]: info for info, _, _ in placed}.values():
                release(info, keep=info["app"] == APP_NAME)  # the serve stage, next, uses it
    results = {s: results[s] for s in models}  # stage order
    summary = {stage: {r.suite: r.summary() for r in rs} for stage, rs in results.items()}
    (run_dir / "eval" / "summary.json").write_text(json.dumps(summary, indent=2))
    plot = plot_scores(summary, run_dir / "report" / "eval_scores.png")
    for stage, per in summary.items():
        cells = ", ".join(f"{name} {r['accuracy']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
                          if r["accuracy"] is not None else f"{name} n/a" for name, r in per.items())
        print(f"  eval {stage}: {cells}")
    errors = sum(r["errors"] for per in summary.values() for r in per.values())
    manifest.write_manifest(
        run_dir, STAGE, cfg, inputs={"models": fingerprints, "suites": {s.name: s.version for s in suites}},
        outputs={"summary": str(run_dir / "eval" / "summary.json"), "plot": str(plot)},
        counts={"models": len(models), "suites": len(suites), "items": sum(len(s.items) for s in suites),
                "endpoint_errors": errors,
                "accuracy": {st: {n: r["accuracy"] for n, r in per.items()} for st, per in summary.items()}},
        timings={"ready_s": round(t_ready, 1), "total_s": round(time.time() - t0, 1)})
    return manifest.read_manifest(run_dir, STAGE)
