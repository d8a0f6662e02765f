"""The pipeline: every stage in recipe order. Adding a stage is one module with a `STAGE` and one
entry here (see ARCHITECTURE.md); the CLI, `phi4ray run`, the report and the job entrypoints all
read this list."""
from __future__ import annotations

from actors import curate, dpo_stage, eval_stage, pts, serve_stage, sft_stage, synthesize, tokenize, train_stages
from phi4ray import init_model
from phi4ray.stage import Stage

STAGES: list[Stage] = [
    init_model.STAGE,
    curate.STAGE,
    synthesize.STAGE,
    tokenize.STAGE,
    train_stages.PRETRAIN,
    train_stages.MIDTRAIN,
    sft_stage.STAGE,
    pts.STAGE,
    dpo_stage.STAGE,
    eval_stage.STAGE,
    serve_stage.STAGE,
]
