"""What the eval stage runs: which suites, against which of the run's models, how."""
from __future__ import annotations

from dataclasses import dataclass

from phi4ray.evals.generators import BUILTIN_SUITES, DEFAULT_SUITES, MAX_SIZE
from phi4ray.run.errors import ConfigError
from phi4ray.run.paths import MODEL_STAGES as NEWEST_FIRST

# the run's model folders, in recipe order: each is scored, so the report shows what each stage did
MODEL_STAGES = tuple(reversed(NEWEST_FIRST))


@dataclass(frozen=True)
class EvalConfig:
    suites: tuple[str, ...] = DEFAULT_SUITES   # built-in suites (phi4ray.evals.generators.BUILTIN_SUITES)
    files: tuple[str, ...] = ()                # user suites: JSONL files of EvalItem lines
    size: int = 40                             # items per built-in suite, at most MAX_SIZE
    models: tuple[str, ...] = MODEL_STAGES     # RUN/models/<stage> folders scored (absent ones skipped)
    mode: str = "chat"                         # "chat" (/v1/chat/completions) or "completion"
    max_tokens: int = 256
    temperature: float = 0.0
    samples: int = 1                           # > 1: pass@k is reported too
    concurrency: int = 16                      # requests in flight per model
    models_at_once: int = 0                    # models served together; 0 = as many as the cluster fits
    seed: int = 1234                           # the built-in suites' generator seed (not the run's:
    # a changed training seed must not change the test set)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.suites) - set(BUILTIN_SUITES))
        if unknown:
            raise ConfigError(f"eval.suites: unknown suite(s) {unknown}; built-in: {list(BUILTIN_SUITES)}")
        bad_models = sorted(set(self.models) - set(MODEL_STAGES))
        if bad_models:
            raise ConfigError(f"eval.models: unknown stage(s) {bad_models}; choose from {list(MODEL_STAGES)}")
        if self.mode not in ("chat", "completion"):
            raise ConfigError(f"eval.mode={self.mode!r} must be 'chat' or 'completion'")
        if self.models_at_once < 0:
            raise ConfigError(f"eval.models_at_once={self.models_at_once} must be >= 0 (0: as many as fit)")
        for name in ("size", "max_tokens", "samples", "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name}={getattr(self, name)} must be >= 1")
        if self.size > MAX_SIZE:  # curation decontaminates against the first MAX_SIZE items of each suite
            raise ConfigError(f"eval.size={self.size} must be at most {MAX_SIZE}")
        if self.temperature < 0:
            raise ConfigError(f"eval.temperature={self.temperature} must be >= 0")
        if not self.suites and not self.files:
            raise ConfigError("eval: no suites and no files: nothing to evaluate")
