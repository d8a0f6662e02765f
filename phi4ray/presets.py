"""Run presets: one name picks the model shape and the few knobs every stage derives the rest from.

`tiny` runs on a laptop CPU in fp32 in minutes; `small` fits one GPU; `phi4-14b` is the report.
"""
from __future__ import annotations

from dataclasses import dataclass

from phi4ray.config import ConfigError, ModelConfig, model_preset

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class RunConfig:
    preset: str
    model: ModelConfig
    seed: int = 0
    # dtype of exported HF folders: fp32 for CPU samplers (bf16 matmuls crawl on CPU), bf16 on GPU
    export_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.export_dtype not in DTYPES:
            raise ConfigError(f"export_dtype={self.export_dtype!r} is not one of {DTYPES}")


def run_preset(name: str) -> RunConfig:
    model = model_preset(name)  # raises ConfigError naming the unknown preset
    return RunConfig(preset=name, model=model, export_dtype="float32" if name == "tiny" else "bfloat16")
