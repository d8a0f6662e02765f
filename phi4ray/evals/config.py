"""What the eval stage runs: which suites, against which of the run's models, how."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

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
    # lm-evaluation-harness's own registry, run on each model after the suites, offline (a task's data
    # set must be on this machine: the HF datasets cache, or local files named in the task's YAML)
    lm_eval_tasks: tuple[str, ...] = ()        # task, group or tag names (built-in, or lm_eval_include's)
    lm_eval_include: str = ""                  # a folder of the user's lm-eval task YAMLs, added to the registry
    lm_eval_limit: int = 0                     # documents per task; 0 = all
    lm_eval_mode: str = ""                     # "chat", "completion" or "" (= eval.mode); completion mode
    # passes the served model's tokenizer folder, which loglikelihood (multiple-choice) tasks need

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
        if self.lm_eval_mode not in ("", "chat", "completion"):
            raise ConfigError(f"eval.lm_eval_mode={self.lm_eval_mode!r} must be 'chat', 'completion' or '' (eval.mode)")
        if self.lm_eval_limit < 0:
            raise ConfigError(f"eval.lm_eval_limit={self.lm_eval_limit} must be >= 0 (0: every document)")
        if self.lm_eval_include and not Path(self.lm_eval_include).is_dir():
            raise ConfigError(f"eval.lm_eval_include={self.lm_eval_include!r} is not a folder (of lm-eval task YAMLs)")
        if not self.suites and not self.files and not self.lm_eval_tasks:
            raise ConfigError("eval: no suites, no files and no lm_eval_tasks: nothing to evaluate")

    @property
    def lm_eval_chat(self) -> bool:
        """Whether lm-eval tasks go to /v1/chat/completions (chat template applied) or /v1/completions."""
        return (self.lm_eval_mode or self.mode) == "chat"

    def grading(self) -> dict:
        """The settings the suites' grades depend on (all but lm-eval's): another lm-eval task
        keeps the graded records."""
        return {k: v for k, v in dataclasses.asdict(self).items() if not k.startswith("lm_eval_")}
