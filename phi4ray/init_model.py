"""Stage `init`: the freshly initialised Phi-4 model of the preset, exported in HF layout.

RUN/models/init is what pretraining starts from and the first model the sampler fleet can serve.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from phi4ray import manifest
from phi4ray.hf import _DTYPES, export_hf, import_hf
from phi4ray.model import build_model
from phi4ray.presets import RunConfig


def run_init(run_dir: str | Path, cfg: RunConfig) -> dict:
    if manifest.is_complete(run_dir, "init", cfg):
        return manifest.read_manifest(run_dir, "init")
    t0 = time.time()
    out = Path(run_dir) / "models" / "init"
    model = build_model(cfg.model, seed=cfg.seed)
    dtype = _DTYPES[cfg.export_dtype]
    export_hf(model, out, dtype=dtype)
    t_export = time.time() - t0
    # read it back: what we wrote must be exactly what we hold (in the exported dtype)
    back = import_hf(out)
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        if not torch.equal(a.to(dtype), b):
            raise RuntimeError(f"{out}: tensor {name} changed on export/import")
    manifest.write_manifest(
        run_dir, "init", cfg, inputs={}, outputs={"model": str(out)},
        counts={"params": cfg.model.num_params(),
                "flops_per_token": cfg.model.flops_per_token(cfg.model.max_seq_len)},
        timings={"export_s": round(t_export, 2), "total_s": round(time.time() - t0, 2)},
    )
    return manifest.read_manifest(run_dir, "init")
