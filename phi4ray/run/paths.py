"""Where things live in a run directory, for the stages that look up another stage's output."""
from __future__ import annotations

from pathlib import Path

from phi4ray.run.errors import MissingInput

# newest first: the model a later stage (serve, the synthesis teacher) should use is the last one trained
MODEL_STAGES = ("dpo2", "dpo", "sft", "midtrain", "pretrain", "init")


def model_dir(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / "models" / stage


def is_model_dir(folder: str | Path) -> bool:
    return (Path(folder) / "config.json").is_file()


def latest_model(run_dir: str | Path) -> Path:
    for stage in MODEL_STAGES:
        d = model_dir(run_dir, stage)
        if is_model_dir(d):
            return d
    raise MissingInput(f"{run_dir}/models: no model folder yet (run `phi4ray init` first)")


def run_tokenizer_dir(run_dir: str | Path) -> str:
    """The folder holding the run's tokenizer: its first model, RUN/models/init (stage init writes
    Phi-4's beside a model from scratch, an imported model's own beside it), or "" for the Phi-4
    tokenizer where the run has no model yet (tokenizing data before init)."""
    d = model_dir(run_dir, "init")
    return str(d.resolve()) if is_model_dir(d) else ""


def check_model_dir(folder: str | Path, what: str) -> Path:
    """An HF model folder the user named, checked before anything starts."""
    p = Path(folder)
    if not p.is_dir():
        raise MissingInput(f"{what}: {folder} is not a folder")
    if not is_model_dir(p):
        raise MissingInput(f"{what}: {folder} has no config.json (not an HF model folder)")
    return p.resolve()
