"""The evaluation suites of a run as files: what the eval stage runs, and what curation keeps out.

- `suite_files`: the built-in suites of `eval.suites` at `eval.size`, written to RUN/eval/suites
  as exactly the text the model is shown, then the user's `eval.files`;
- `decontam_files`: what curation decontaminates the training data against: every built-in suite
  at MAX_SIZE items (generators are prefix-stable, so these cover the items of any `eval.size`
  and any choice of `eval.suites`), written to RUN/eval/decontam, then `eval.files`. It depends on
  `eval.seed` and `eval.files` only: changing the size or the suites evaluated re-runs eval alone,
  never curation and the training after it.
"""
from __future__ import annotations

from pathlib import Path

from phi4ray.evals.generators import BUILTIN_SUITES, MAX_SIZE, builtin_suites
from phi4ray.evals.jsonl import load_suite_jsonl, write_suite_jsonl
from phi4ray.evals.lm_eval_task import check_lm_eval_tasks, include_files
from phi4ray.evals.schema import Suite, SuiteError
from phi4ray.run.errors import ConfigError, MissingInput


def _write(suites: list[Suite], out: Path) -> list[Path]:
    return [write_suite_jsonl(s, out / f"{s.name}.jsonl") for s in suites]


def suite_files(run_dir: Path, cfg) -> list[Path]:
    """The suites the eval stage runs, as files: the built-in ones (re-)written under
    RUN/eval/suites, then the user's."""
    e = cfg.eval
    paths = _write(builtin_suites(e.seed, e.size, e.suites), Path(run_dir) / "eval" / "suites")
    return paths + [Path(f) for f in e.files]


def decontam_files(run_dir: Path, cfg) -> list[Path]:
    """The evaluation items curation keeps out of the training data, independent of `eval.size`
    and `eval.suites`: every built-in suite at MAX_SIZE (written under RUN/eval/decontam), then
    the user's `eval.files`."""
    e = cfg.eval
    paths = _write(builtin_suites(e.seed, MAX_SIZE, BUILTIN_SUITES), Path(run_dir) / "eval" / "decontam")
    return paths + [Path(f) for f in e.files]


def load_suites(paths: list[Path]) -> list[Suite]:
    """Every file's suite; two suites of one name (they name the result files) are refused."""
    suites = [load_suite_jsonl(p) for p in paths]
    names = [s.name for s in suites]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SuiteError(f"eval: suite name(s) {dup} given twice (a user file named like a built-in suite?)")
    return suites


def check_eval_files(cfg, run_dir: Path, options: dict) -> None:
    """The user's suite files exist (the eval stage's `check`: before anything starts)."""
    for f in cfg.eval.files:
        if not Path(f).is_file():
            raise MissingInput(f"eval.files: {f} is not a file")


def check_eval(cfg, run_dir: Path, options: dict) -> None:
    """The eval stage's `check`, before anything starts: the user's suite files exist, and every
    name in `eval.lm_eval_tasks` is in lm-eval's registry (indexing it takes about 9 s, paid only
    when tasks are named)."""
    check_eval_files(cfg, run_dir, options)
    e = cfg.eval
    if e.lm_eval_include and not e.lm_eval_tasks:  # here, not in EvalConfig: overrides apply one at a time
        raise ConfigError("eval.lm_eval_include without eval.lm_eval_tasks: name the tasks (or groups) to run")
    check_lm_eval_tasks(e.lm_eval_tasks, e.lm_eval_include or None)


def eval_input_files(cfg) -> list[str]:
    """The user's files whose contents join the eval stage's key: suite files and the task
    definitions of `eval.lm_eval_include`."""
    return list(cfg.eval.files) + include_files(cfg.eval.lm_eval_include)
