"""Stage `init`: the freshly initialised Phi-4 model of the preset, exported in HF layout.

RUN/models/init is what pretraining starts from and the first model the sampler fleet can serve.
The one stage without Ray: a plain function of the model config and the seed.
"""
from __future__ import annotations

import time

import torch

from phi4ray.model.decoder import build_model
from phi4ray.model.hf import TORCH_DTYPES, export_hf, import_hf
from phi4ray.run.paths import model_dir
from phi4ray.run.stage import Stage, StageResult


def run(ctx) -> StageResult:
    cfg = ctx.cfg
    t0 = time.time()
    out = model_dir(ctx.run_dir, "init")
    model = build_model(cfg.model, seed=cfg.seed)
    dtype = TORCH_DTYPES[cfg.export_dtype]
    export_hf(model, out, dtype=dtype)
    t_export = time.time() - t0
    # read it back: what we wrote must be exactly what we hold (in the exported dtype)
    back = import_hf(out)
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        if not torch.equal(a.to(dtype), b):
            raise RuntimeError(f"{out}: tensor {name} changed on export/import")
    return StageResult(outputs={"model": str(out)},
                       counts={"params": cfg.model.num_params(),
                               "flops_per_token": cfg.model.flops_per_token(cfg.model.max_seq_len)},
                       timings={"export_s": round(t_export, 2)})


STAGE = Stage(name="init", summary="tokenizer + freshly initialised model of the preset, exported in HF layout",
              run=run, sections=("model", "seed", "export_dtype"), outputs=("models/init",), headline=("params",),
              needs_ray=False)
