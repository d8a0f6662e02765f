"""An example stage, as a newcomer adds one: this file plus one entry in jobs/registry.py's STAGES
(tests/test_stage.py adds the entry). It reads the init stage's model folder and writes a model
card; it needs no Ray."""
from __future__ import annotations

import json

from phi4ray.run.paths import model_dir
from phi4ray.run.stage import Stage, StageResult


def run(ctx) -> StageResult:
    config = json.loads((model_dir(ctx.run_dir, "init") / "config.json").read_text())
    card = ctx.run_dir / "model_card.md"
    card.write_text(f"# {ctx.cfg.preset}\n\n{config['num_hidden_layers']} layers, hidden {config['hidden_size']}\n")
    return StageResult(outputs={"card": str(card)}, counts={"layers": config["num_hidden_layers"]})


STAGE = Stage(name="model_card", summary="a one-page card of the initial model", run=run,
              sections=("model",), reads=("init",), outputs=("model_card.md",), headline=("layers",),
              needs_ray=False)
