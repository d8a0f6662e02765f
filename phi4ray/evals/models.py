"""The run's models as the eval stage sees them: which are scored, whether their grades still
hold, and how they share the serving fleet.

Models of one engine shape (weights differ, config does not: init and pretrain; midtrain, SFT and
DPO share midtraining's RoPE base) form a lane: one deployment serves them in turn, swapping
weights in place, since an engine start costs far more than a reload. Lanes run side by side; a
cluster too small for all of them serves them in groups that fit.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Sequence, TypeVar

from phi4ray.run.errors import MissingInput
from phi4ray.run.paths import is_model_dir, model_dir

T = TypeVar("T")


def stage_models(run_dir: Path, cfg) -> dict[str, Path]:
    """{stage: RUN/models/<stage>} for the `eval.models` that exist, in recipe order."""
    models = {s: model_dir(run_dir, s) for s in cfg.eval.models if is_model_dir(model_dir(run_dir, s))}
    if not models:
        raise MissingInput(f"{run_dir}/models: none of eval.models={list(cfg.eval.models)} exists yet")
    return models


def model_fingerprint(folder: Path) -> str:
    """The folder's files by name, size and mtime: a retrained model gets another fingerprint."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    blob = json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def graded_dir(run_dir: Path, stage: str, fingerprint: str, grading: dict | None = None) -> Path:
    """RUN/eval/<stage>, where that model's graded records live; emptied when the model it graded
    has changed since (another fingerprint) or the grading has (`grading`: the suites' versions and
    the eval settings, e.g. another eval.size), kept otherwise so that a rerun resumes."""
    d = Path(run_dir) / "eval" / stage
    marker = d / "model.json"
    want = {"fingerprint": fingerprint, "grading": grading}
    if marker.is_file() and json.loads(marker.read_text()) != want:
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(want, sort_keys=True))
    return d


def lanes(shapes: dict[str, Any]) -> list[list[str]]:
    """Stages grouped by engine shape ({stage: shape}, JSON-able), in stage order: each lane is
    served by one deployment."""
    out: dict[str, list[str]] = {}
    for stage, shape in shapes.items():
        out.setdefault(json.dumps(shape, sort_keys=True), []).append(stage)
    return list(out.values())


def deployments_that_fit(free: dict[str, float], cfg) -> int:
    """How many deployments to serve at once: `eval.models_at_once`, else as many as the free
    resources hold (a CPU deployment takes 2 logical CPUs: its replica and its engine's bundle,
    plus one CPU for the ingress; a GPU one a GPU); at least one."""
    if cfg.eval.models_at_once:
        fit = cfg.eval.models_at_once
    elif cfg.serve.device == "gpu":
        fit = int(free.get("GPU", 0))
    else:
        fit = int(free.get("CPU", 0) - 1) // 2
    return max(1, fit)


def in_groups(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def split_main_lane(group: list[list[str]], all_lanes: list[list[str]], models: dict[str, Path],
                    newest: Path | None, model_id: str) -> tuple[list[str] | None, dict[str, list[str]]]:
    """(the lane ending on `newest`, or None; {model id: lane} for the others). In a pipeline run
    the main lane goes on the main fleet under serve.model_id, where the serve stage that comes
    next finds it up and serving that model; the others share a side app, each under its own id."""
    main = next((lane for lane in group if newest and models[lane[-1]].resolve() == newest), None)
    side = {f"{model_id}-eval-{all_lanes.index(lane)}": lane for lane in group if lane is not main}
    return main, side
