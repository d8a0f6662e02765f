"""Stage `serve`: host a model folder on the sampler fleet and answer on an OpenAI endpoint.

`phi4ray serve --model DIR` keeps serving until Ctrl-C or SIGTERM (what Kubernetes sends a pod
it stops): either deletes the app, its replicas letting in-flight requests finish within the grace
period (serve_app.SHUTDOWN_GRACE_S), and the command exits 0. Inside `phi4ray run` the stage serves
the run's newest model, answers one chat request as a smoke test, records it in the manifest and
leaves the app to the run context, which deletes it at the end.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx

from phi4ray.run.console import say
from phi4ray.run.paths import MODEL_STAGES, check_model_dir, latest_model
from phi4ray.run.stage import Flag, Stage, StageResult

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


class StopSignals:
    """Ctrl-C and SIGTERM as one clean stop for a command that serves until stopped. While armed,
    SIGTERM only sets a flag, and a second one while the app is being deleted is ignored (not a
    kill with a stack dump); `wait` returns which signal came. Not active (a pipeline run, --smoke)
    or outside the main thread (no signal handlers there), SIGTERM keeps its usual meaning.

    `arm` again once Ray is up: `ray.init` puts its own SIGTERM handlers in place (Python's
    sys.exit, and the core worker's C++ handler that prints a stack dump and aborts)."""

    def __init__(self, active: bool = True):
        self.active = active and threading.current_thread() is threading.main_thread()
        self.stopped = threading.Event()
        self._armed = False
        self._previous = signal.SIG_DFL  # the handler to put back: the last one that was not ours

    def _on_sigterm(self, signum, frame) -> None:
        self.stopped.set()

    def arm(self) -> None:
        if self.active:
            previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            if previous != self._on_sigterm:
                self._previous = signal.SIG_DFL if previous is None else previous
            self._armed = True

    def __enter__(self) -> "StopSignals":
        self.arm()
        return self

    def __exit__(self, *exc) -> None:
        if self._armed:
            signal.signal(signal.SIGTERM, self._previous)
            self._armed = False

    def wait(self) -> str:
        try:
            while not self.stopped.is_set():
                time.sleep(0.5)  # a signal handler runs between sleeps; the flag is seen within 0.5 s
        except KeyboardInterrupt:
            return "Ctrl-C"
        return "SIGTERM"


def run(ctx) -> StageResult:
    model_dir = model_to_serve(ctx.run_dir, ctx.options)
    until_stopped = ctx.interactive and not ctx.options.get("smoke")
    with StopSignals(active=until_stopped) as signals:
        t0 = time.time()
        app = ctx.fleet.start(str(model_dir), app=ctx.options.get("app"))
        t_ready = time.time() - t0
        answer = smoke_chat(app, ctx.cfg.serve)
        say(f"serving {model_dir} at {app.url} (model id {app.model_id!r}); ready in {t_ready:.0f}s"
            + (" (the fleet an earlier stage left up, weights swapped in place)" if app.reused else ""))
        say(f"  smoke chat: {SMOKE_QUESTION!r} -> {answer!r}")
        if until_stopped:
            signals.arm()  # over the handlers ray.init installed while the app started
            say("Ctrl-C (or SIGTERM) to stop.")
            why = signals.wait()
            say(f"serve: {why}: stopping; in-flight requests get the replicas' grace period to finish")
        ctx.fleet.release(app, keep=True)  # the run context deletes it at the end of the run
        if until_stopped:
            say(f"serve: stopped; app {app.name!r} deleted")
    return StageResult(inputs={"model": str(model_dir)},
                       outputs={"url": app.url, "smoke_question": SMOKE_QUESTION, "smoke_answer": answer},
                       counts={"fleet_reused": app.reused}, timings={"ready_s": round(t_ready, 1)})


STAGE = Stage(
    name="serve", summary="Ray Serve + vLLM sampler fleet, OpenAI-compatible endpoint with autoscaling",
    run=run, sections=("serve",), uses=MODEL_STAGES, check=check, headline=("fleet_reused",), rerun_alone=True,
    flags=(Flag("model", "HF model folder to serve (default: the run's newest model)"),
           Flag("app", "Serve application name (default: the fleet's own); another name serves beside it, "
                       "under /NAME/v1, so a second `phi4ray serve` on a shared cluster does not replace the first"),
           Flag("smoke", "answer one chat request, then stop (default: serve until Ctrl-C or SIGTERM)", switch=True)))
