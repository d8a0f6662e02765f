"""The pipeline: every stage in recipe order. Adding a stage is one module with a `STAGE` and one
entry here (see ARCHITECTURE.md); the CLI, `phi4ray run`, the report and the job entrypoints all
read this list."""
from __future__ import annotations

from actors.data import curate, synthesize, tokenize
from actors.evals import stage as eval_stage
from actors.posttrain import dpo_stage, pts, sft_stage
from actors.serve import stage as serve_stage
from actors.train import pretrain_stages as train_stages
from phi4ray.model import init_model
from phi4ray.run.stage import Stage

STAGES: list[Stage] = [
    init_model.STAGE,
    curate.STAGE,
    synthesize.STAGE,
    tokenize.STAGE,
    train_stages.PRETRAIN,
    train_stages.MIDTRAIN,
    sft_stage.STAGE,
    pts.STAGE,
    dpo_stage.ROUND1,
    dpo_stage.ROUND2,
    eval_stage.STAGE,
    serve_stage.STAGE,
]
