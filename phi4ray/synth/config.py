"""What the synthesize stage does: which steps, on how many seeds, with which teacher."""
from __future__ import annotations

from dataclasses import dataclass

from phi4ray.config import ConfigError

STEPS = ("rewrite", "revise", "reversal", "qa", "plurality")


@dataclass(frozen=True)
class SynthesizeConfig:
    steps: tuple[str, ...] = STEPS
    seeds: int = 64                 # seeds per step drawn from RUN/curated
    teacher: str = "fleet"          # "fleet": serve teacher_model on our sampler fleet; "endpoint": teacher_url
    teacher_model: str = ""         # HF folder for the fleet; "" = the run's newest model folder
    teacher_url: str = ""           # OpenAI-compatible base URL (…/v1) when teacher="endpoint"
    teacher_name: str = ""          # the model name that endpoint expects
    teacher_api_key_env: str = "OPENAI_API_KEY"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.steps) - set(STEPS))
        if unknown:
            raise ConfigError(f"synth.steps: unknown step(s) {unknown}; steps: {list(STEPS)}")
        if self.teacher not in ("fleet", "endpoint"):
            raise ConfigError(f"synth.teacher={self.teacher!r} must be 'fleet' or 'endpoint'")
        if self.teacher == "endpoint" and not (self.teacher_url and self.teacher_name):
            raise ConfigError("synth.teacher=endpoint needs synth.teacher_url and synth.teacher_name")
        if self.seeds < 1:
            raise ConfigError(f"synth.seeds={self.seeds} must be >= 1")
