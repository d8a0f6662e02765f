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


def start(model_dir: str, cfg) -> dict:
    """Start Ray (or join RAY_ADDRESS), Serve and the sampler app; returns its URLs and names."""
    from ray import serve

    from actors.ray_session import ensure_ray
    from actors.serve_app import APP_NAME, build_sampler_app, sampler_deployment_name, sampler_llm_config

    s = cfg.serve
    ensure_ray(min_cpus=8)  # kept running: the app serves until the caller deletes it
    serve.start(http_options={"host": s.host, "port": s.port})
    llm_config = sampler_llm_config(
        model_dir, model_id=s.model_id, device=s.device, engine=s.engine, min_replicas=s.min_replicas,
        max_replicas=s.max_replicas, target_ongoing_requests=s.target_ongoing_requests,
        max_model_len=s.max_model_len or None, kv_cache_gib=s.kv_cache_gib)
    serve.run(build_sampler_app(llm_config, api_key_env=s.api_key_env or None), name=APP_NAME, route_prefix="/")
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    return {"url": f"http://{host}:{s.port}/v1", "app": APP_NAME,
            "deployment": sampler_deployment_name(llm_config), "model_id": s.model_id}


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
    from ray import serve

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
    print(f"serving {model_dir} at {info['url']} (model id {info['model_id']!r}); ready in {t_ready:.0f}s")
    print(f"  smoke chat: {question!r} -> {answer!r}")
    manifest.write_manifest(run_dir, "serve", cfg, inputs={"model": str(model_dir)},
                            outputs={"url": info["url"], "smoke_question": question, "smoke_answer": answer},
                            counts={}, timings={"ready_s": round(t_ready, 1)})
    if block:
        print("Ctrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    serve.delete(info["app"])
    return manifest.read_manifest(run_dir, "serve")
