"""A training stage's metrics (RUN/checkpoints/<stage>/metrics.jsonl, written by rank 0 of the
trainer) and its loss plot."""
from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

from phi4ray.run.console import progress, tail


def metrics_file(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / "checkpoints" / stage / "metrics.jsonl"


def read_metrics(run_dir: str | Path, stage: str) -> list[dict]:
    p = metrics_file(run_dir, stage)
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


@contextlib.contextmanager
def step_progress(run_dir: str | Path, stage: str, steps: int, every_s: float = 2.0):
    """A console progress bar of the training steps while the block runs (Ray Train's fit). The
    driver only waits there; the steps are whatever rank 0 has logged, read from the metrics file
    (its last line: the file is append-only, so a seek to the end bounds the read)."""
    path, stop = metrics_file(run_dir, stage), threading.Event()
    with progress(steps, f"{stage} steps", "step") as bar:
        if bar.disable:  # nothing to draw (no terminal): no thread
            yield
            return

        def follow() -> None:
            while not stop.wait(every_s):
                last = _last_line(path)
                if last:
                    bar.n = min(steps, last["step"])
                    bar.set_postfix(loss=f"{last['loss']:.3f}", refresh=True)

        t = threading.Thread(target=follow, daemon=True, name=f"{stage}-progress")
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()


def _last_line(path: Path) -> dict | None:
    lines = tail(path, 1)  # [] before the file exists
    try:
        return json.loads(lines[0]) if lines else None
    except ValueError:  # a line half written
        return None


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines past `step`: a run resumed from the step-`step` checkpoint trains (and logs)
    the later steps again, and each logged step should appear once."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        path.write_text("".join(line + "\n" for line in kept))


def training_counts(run_dir: str | Path, stage: str, tokens_per_step: int) -> dict:
    """The stage's headline counts from its metrics."""
    metrics = read_metrics(run_dir, stage)
    last = metrics[-1]
    return {"steps": last["step"], "final_loss": last["loss"], "first_loss": metrics[0]["loss"],
            "tokens": last["step"] * tokens_per_step,
            "tokens_per_s": sum(m["tokens_per_s"] for m in metrics) / len(metrics)}


def plot_loss(run_dir: str | Path, stage: str) -> Path | None:
    """RUN/report/loss_<stage>.png: loss against step, one colour per worker count (resizes show)."""
    metrics = read_metrics(run_dir, stage)
    if not metrics:
        return None
    import matplotlib  # deferred: plotting libraries load only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after the backend is chosen

    fig, ax = plt.subplots(figsize=(6, 3.5))
    segments: list[list[dict]] = []  # contiguous runs on one worker count (a resize starts a new one)
    for m in metrics:
        if not segments or segments[-1][-1]["world_size"] != m["world_size"]:
            segments.append([])
        segments[-1].append(m)
    colors, seen = {}, set()
    for seg in segments:
        world = seg[0]["world_size"]
        colors.setdefault(world, f"C{len(colors)}")
        ax.plot([m["step"] for m in seg], [m["loss"] for m in seg], marker=".", color=colors[world],
                label=None if world in seen else f"{world} worker(s)")
        seen.add(world)
    ax.set(xlabel="step", ylabel="loss", title=f"{stage} loss")
    ax.legend()
    out = Path(run_dir) / "report" / f"loss_{stage}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
