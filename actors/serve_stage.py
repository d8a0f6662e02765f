"""Stage `serve`: host a model folder on the sampler fleet and answer on an OpenAI endpoint.

`phi4ray serve --model DIR` keeps serving until interrupted; inside `phi4ray run` the stage
serves the run's newest model, answers one chat request as a smoke test, records it in the
manifest and leaves the app to the run context, which deletes it at the end.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from phi4ray.runs import MODEL_STAGES, check_model_dir, latest_model
from phi4ray.stage import Flag, Stage, StageResult

SMOKE_QUESTION = "What is 2 + 3?"


def smoke_chat(app, serve_cfg, question: str = SMOKE_QUESTION) -> str:
    headers = {}
    if serve_cfg.api_key_env:
        headers["Authorization"] = f"Bearer {os.environ[serve_cfg.api_key_env]}"
    r = httpx.post(app.url + "/chat/completions", headers=headers, timeout=300, json={
        "model": app.model_id, "messages": [{"role": "user", "content": question}],
        "max_tokens": 32, "temperature": 0})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def model_to_serve(run_dir: Path, options: dict) -> Path:
    model = options.get("model")  # --model
    return check_model_dir(model, "serve --model") if model else latest_model(run_dir).resolve()


def check(cfg, run_dir: Path, options: dict) -> None:
    model_to_serve(run_dir, options)  # a missing or broken model folder is the user's to fix, said in one line


def run(ctx) -> StageResult:
    model_dir = model_to_serve(ctx.run_dir, ctx.options)
    t0 = time.time()
    app = ctx.fleet.start(str(model_dir))
    t_ready = time.time() - t0
    answer = smoke_chat(app, ctx.cfg.serve)
    print(f"serving {model_dir} at {app.url} (model id {app.model_id!r}); ready in {t_ready:.0f}s"
          + (" (the fleet an earlier stage left up, weights swapped in place)" if app.reused else ""))
    print(f"  smoke chat: {SMOKE_QUESTION!r} -> {answer!r}")
    if ctx.interactive and not ctx.options.get("smoke"):
        print("Ctrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    ctx.fleet.release(app, keep=True)  # the run context deletes it at the end of the run
    return StageResult(inputs={"model": str(model_dir)},
                       outputs={"url": app.url, "smoke_question": SMOKE_QUESTION, "smoke_answer": answer},
                       counts={"fleet_reused": app.reused}, timings={"ready_s": round(t_ready, 1)})


STAGE = Stage(
    name="serve", summary="Ray Serve + vLLM sampler fleet, OpenAI-compatible endpoint with autoscaling",
    run=run, sections=("serve",), uses=MODEL_STAGES, check=check, headline=("fleet_reused",), rerun_alone=True,
    flags=(Flag("model", "HF model folder to serve (default: the run's newest model)"),
           Flag("smoke", "answer one chat request, then stop (default: serve until Ctrl-C)", switch=True)))
