"""Stage `init`: the run's first model, RUN/models/init, with the run's tokenizer beside it.

Either a freshly initialised model of the preset's shape with the Phi-4 tokenizer (pretraining
from scratch), or, with `import_from`, a pretrained model imported with its own tokenizer and chat
template (phi4ray.model.import_model): every later stage finds the run's tokenizer here.
The one stage without Ray: a plain function of the config.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from phi4ray.model.config import ModelConfig
from phi4ray.model.decoder import build_model
from phi4ray.model.hf import TORCH_DTYPES, export_hf, import_hf
from phi4ray.model.phi4_tokenizer import phi4_tokenizer
from phi4ray.run.errors import ConfigError
from phi4ray.run.paths import model_dir
from phi4ray.run.stage import Stage, StageResult


def check_shape(imported: ModelConfig, preset: ModelConfig, source: str) -> None:
    """The run's `model` section must describe the imported model: every stage sizes its work from it."""
    skip = {"init_std", "embed_init_std"}  # initialisation only: an imported model is already trained
    diff = [f"model.{f.name}: preset {getattr(preset, f.name)!r}, imported {getattr(imported, f.name)!r}"
            for f in dataclasses.fields(ModelConfig) if f.name not in skip
            and getattr(preset, f.name) != getattr(imported, f.name)]
    if diff:
        raise ConfigError(f"import_from={source}: the run's model section does not describe this model ("
                          + "; ".join(diff) + "); use a preset made for it (e.g. smol) or set those model.* overrides")


def run(ctx) -> StageResult:
    cfg = ctx.cfg
    t0 = time.time()
    out = model_dir(ctx.run_dir, "init")
    if cfg.import_from:
        from phi4ray.model.import_model import import_model  # deferred: transformers, only for imports

        imported, _ = import_model(cfg.import_from, out, dtype=cfg.export_dtype,
                                   check=lambda got: check_shape(got, cfg.model, cfg.import_from))
        return StageResult(outputs={"model": str(out)}, counts={"params": imported.num_params(), "imported": 1},
                           timings={"import_s": round(time.time() - t0, 2)})
    model = build_model(cfg.model, seed=cfg.seed)
    dtype = TORCH_DTYPES[cfg.export_dtype]
    export_hf(model, out, phi4_tokenizer(), dtype=dtype)
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


def check(cfg, run_dir, options) -> None:
    """A source that does not exist fails before the run starts."""
    if cfg.import_from:
        from phi4ray.model.import_model import resolve_source  # deferred: as in run()

        resolve_source(cfg.import_from)


STAGE = Stage(name="init", summary="the run's first model and tokenizer: freshly initialised, or imported (import_from)",
              run=run, check=check, sections=("model", "seed", "export_dtype", "import_from"), outputs=("models/init",),
              headline=("params",), needs_ray=False)
