"""Stage `serve`: host a model folder on the sampler fleet and answer on an OpenAI endpoint.

`phi4ray serve --model DIR` keeps serving until interrupted; inside `phi4ray run` the stage
serves the run's newest model, answers one chat request as a smoke test, records it in the
manifest and shuts the app down so the pipeline can finish.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

# newest first: the model a pipeline run should serve is the last stage's
MODEL_STAGES = ("dpo", "sft", "midtrain", "pretrain", "init")


def latest_model(run_dir: Path) -> Path:
    for stage in MODEL_STAGES:
        d = Path(run_dir) / "models" / stage
        if (d / "config.json").is_file():
            return d
    raise FileNotFoundError(f"{run_dir}/models: no model folder yet (run `phi4ray init` first)")


# the apps this process deployed, and the folder each of their models serves now:
# {app: {"info": start()'s dict, "folders": {model_id: folder}}}
_live: dict[str, dict] = {}


def start(model_dir: str | dict[str, str], cfg, app: str | None = None) -> dict:
    """Start Ray (or join RAY_ADDRESS), Serve and the sampler app; returns its URLs and names.
    `model_dir` is one folder (served as `serve.model_id`) or {model_id: folder} for several models
    behind one endpoint. Another `app` name serves beside the main fleet, under /<app>/v1.

    Inside a pipeline run (actors.ray_session.one_cluster) an app an earlier stage left up is
    reused when it serves the same model ids on engines of the same shape: new weights are swapped
    in place, seconds instead of an engine start (pts -> eval -> serve share one fleet)."""
    from ray import serve

    from actors.ray_session import SERVE_CPUS, ensure_ray
    from actors.serve_app import APP_NAME, build_sampler_app, sampler_deployment_name, sampler_llm_config
    from actors.weights import forget_targets

    s = cfg.serve
    models = model_dir if isinstance(model_dir, dict) else {s.model_id: model_dir}
    models = {mid: str(Path(folder).resolve()) for mid, folder in models.items()}
    ensure_ray(min_cpus=SERVE_CPUS)  # kept running: the app serves until the caller deletes it
    app = app or APP_NAME
    reused = _reuse(app, models)
    if reused:
        return {**reused, "reused": True}
    serve.start(http_options={"host": s.host, "port": s.port})
    llm_configs = [sampler_llm_config(
        folder, model_id=mid, device=s.device, engine=s.engine, min_replicas=s.min_replicas,
        max_replicas=s.max_replicas, target_ongoing_requests=s.target_ongoing_requests,
        max_model_len=s.max_model_len or None, kv_cache_gib=s.kv_cache_gib) for mid, folder in models.items()]
    prefix = "/" if app == APP_NAME else f"/{app}"
    forget_targets(app, [sampler_deployment_name(c) for c in llm_configs])
    serve.run(build_sampler_app(llm_configs, api_key_env=s.api_key_env or None), name=app, route_prefix=prefix)
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    info = {"url": f"http://{host}:{s.port}{prefix.rstrip('/')}/v1", "app": app,
            "deployment": sampler_deployment_name(llm_configs[0]), "model_id": llm_configs[0].model_id,
            "models": {c.model_id: sampler_deployment_name(c) for c in llm_configs}}
    _live[app] = {"info": info, "folders": models}
    return {**info, "reused": False}


def _reuse(app: str, models: dict[str, str]) -> dict | None:
    from ray import serve

    from actors.ray_session import holding
    from actors.weights import model_shape

    live = _live.get(app)
    if not (holding() and live and set(live["folders"]) == set(models)):
        return None
    status = serve.status().applications.get(app)
    if status is None or status.status != "RUNNING":
        return None
    if any(model_shape(live["folders"][mid]) != model_shape(folder) for mid, folder in models.items()):
        return None
    for mid, folder in models.items():
        swap(live["info"], mid, folder)
    return live["info"]


def swap(info: dict, model_id: str, folder: str) -> None:
    """Serve another checkpoint of the same shape under `model_id` of a running app, in place."""
    from actors.weights import refresh_weights

    folder = str(Path(folder).resolve())
    live = _live[info["app"]]  # an app start() deployed and nobody has released
    if live["folders"].get(model_id) != folder:
        refresh_weights(info["app"], info["models"][model_id], folder)
        live["folders"][model_id] = folder


def release(info: dict, keep: bool = False) -> None:
    """A stage is done with its app: deleted, or with `keep` inside a pipeline run left up for a
    later stage to reuse (release_all deletes what is left at the run's end). Keep only what a
    later stage serves and nothing in between needs the resources of (a GPU replica left up
    through a training stage would hold a GPU the trainer asks for)."""
    from actors.ray_session import holding

    if not (keep and holding()):
        _delete(info["app"])


def release_all() -> None:
    for app in list(_live):
        _delete(app)


def _delete(app: str) -> None:
    from ray import serve

    _live.pop(app, None)
    serve.delete(app)


def smoke_chat(info: dict, cfg, question: str = "What is 2 + 3?") -> str:
    import httpx

    headers = {}
    if cfg.serve.api_key_env:
        headers["Authorization"] = f"Bearer {os.environ[cfg.serve.api_key_env]}"
    r = httpx.post(info["url"] + "/chat/completions", headers=headers, timeout=300, json={
        "model": info["model_id"], "messages": [{"role": "user", "content": question}],
        "max_tokens": 32, "temperature": 0})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def run_serve(run_dir: Path, cfg, model: str | None = None, block: bool = False) -> dict:
    from phi4ray import manifest

    model_dir = (Path(model) if model else latest_model(run_dir)).resolve()
    done = manifest.read_manifest(run_dir, "serve")
    if (not block and done and manifest.is_complete(run_dir, "serve", cfg)
            and done["inputs"]["model"] == str(model_dir)):
        return done  # this model already passed its smoke test in this run
    t0 = time.time()
    info = start(str(model_dir), cfg)
    t_ready = time.time() - t0
    question = "What is 2 + 3?"
    answer = smoke_chat(info, cfg, question)
    print(f"serving {model_dir} at {info['url']} (model id {info['model_id']!r}); ready in {t_ready:.0f}s"
          + (" (the fleet an earlier stage left up, weights swapped in place)" if info["reused"] else ""))
    print(f"  smoke chat: {question!r} -> {answer!r}")
    manifest.write_manifest(run_dir, "serve", cfg, inputs={"model": str(model_dir)},
                            outputs={"url": info["url"], "smoke_question": question, "smoke_answer": answer},
                            counts={"fleet_reused": info["reused"]}, timings={"ready_s": round(t_ready, 1)})
    if block:
        print("Ctrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    release(info)
    return manifest.read_manifest(run_dir, "serve")
