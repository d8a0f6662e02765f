"""The stage contract: what a stage declares, and the one runner that runs any stage.

A stage is a function from the run directory's earlier outputs to new ones, plus the config
sections it depends on. It declares:
  name, summary     what it is called and does (the CLI's help)
  sections          the RunConfig paths its output depends on, its own section first
  reads / uses      stages whose outputs it needs / reads when they exist (a fallback otherwise)
  outputs           paths under RUN it writes
  headline          the counts the report's table shows
  files(cfg)        optional: the user's input files named by the config; their contents join the key
  check(cfg, run_dir, options)  optional: user errors found before Ray starts (a missing input file)
  flags             its own command-line flags (their values reach run() as ctx.options)
  run(ctx) -> StageResult       the work

The runner (`run_stage`) does the rest the same way for every stage: refuse a stage whose inputs
are missing before anything starts, skip a complete one, time it, write its manifest and the
report, and print one line. Completeness is a content key: the hash of the stage's own config
sections, of its input files' contents and of the keys of the stages it read. Changing `eval.size` changes only eval's key;
changing `pretrain.steps` changes pretrain's key and, through it, the key of every stage after it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from phi4ray.run import console, manifest
from phi4ray.run.errors import MissingInput, UserError
from phi4ray.run.report import write_report


class Context(Protocol):
    """What a stage's run() is handed (actors.context.RunContext is the real one)."""
    run_dir: Path
    cfg: Any
    options: dict


@dataclass
class StageResult:
    counts: dict
    outputs: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)   # the runner adds total_s


@dataclass(frozen=True)
class Flag:
    """A stage's own command-line flag, `--name VALUE` or a `--name` switch; part of the stage's key."""
    name: str
    help: str
    switch: bool = False


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    run: Callable[[Context], StageResult]
    sections: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    headline: tuple[str, ...] = ()
    check: Callable[[Any, Path, dict], None] | None = None
    flags: tuple[Flag, ...] = ()
    files: Callable[[Any], Iterable[str]] | None = None
    rerun_alone: bool = False     # run by hand, it runs even when complete (serving is the point of serve)
    needs_ray: bool = True


def all_checks(*checks: Callable[[Any, Path, dict], None]) -> Callable[[Any, Path, dict], None]:
    """One `Stage.check` running each of `checks` in order (the first failure stops it)."""
    def check(cfg, run_dir: Path, options: dict) -> None:
        for c in checks:
            c(cfg, run_dir, options)
    return check


class StageFailed(Exception):
    """A stage raised something that is not the user's error; the cause is chained, `log` is the
    stage's log file (its last lines go to the console beside the traceback)."""

    def __init__(self, message: str, log: Path | None = None):
        super().__init__(message)
        self.log = log


def section_values(cfg, sections: Iterable[str]) -> dict:
    """{"pretrain": {...}, "data.seq_len": 128}: the config values a stage's output depends on."""
    out = {}
    for path in sections:
        value = cfg
        for part in path.split("."):
            value = getattr(value, part)  # a typo in a declaration fails loudly here, in every test
        out[path] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def _complete_key(run_dir: Path, name: str) -> str | None:
    m = manifest.read_manifest(run_dir, name)
    return m["key"] if m and m.get("complete") and m.get("key") else None


def file_digest(path: str) -> str | None:
    """sha256 of a file's bytes through fsspec (streamed), None when it does not exist: a user's
    file edited in place is new input, whatever its name."""
    import fsspec  # deferred: only stages with input files read through it

    h = hashlib.sha256()
    try:
        with fsspec.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError:
        return None
    return h.hexdigest()[:16]


def stage_key(stage: Stage, cfg, run_dir: Path, options: dict | None = None) -> str:
    """Content key: own sections + CLI options + the keys of the complete stages it reads or uses.
    A used stage that has not run counts as absent, so running it later changes this key."""
    upstream = {s: _complete_key(run_dir, s) for s in (*stage.reads, *stage.uses)}
    files = {f: file_digest(f) for f in (stage.files(cfg) if stage.files else ())}
    blob = json.dumps({"sections": section_values(cfg, stage.sections), "options": options or {},
                       "upstream": upstream, **({"files": files} if files else {})},
                      sort_keys=True, default=manifest.jsonable)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_inputs(stage: Stage, cfg, run_dir: Path, options: dict | None = None,
                 order: list[Stage] | None = None) -> None:
    """Everything a stage needs that is not there, found before any Ray or worker starts: a stage
    it reads that has not run, or (given the pipeline's `order`) that ran under another config."""
    known = {s.name: s for s in order or ()}
    for need in stage.reads:
        done = _complete_key(run_dir, need)
        if not done:
            raise MissingInput(f"{stage.name} reads the output of `{need}`, which has not run in "
                               f"{run_dir}: run `phi4ray {need}` first (or `phi4ray run`)")
        if need in known and stage_key(known[need], cfg, run_dir) != done:
            raise MissingInput(f"{stage.name} reads the output of `{need}`, which ran under another config "
                               f"than this one: run `phi4ray {need}` with it first (or `phi4ray run`)")
    if stage.check:
        stage.check(cfg, run_dir, options or {})


def is_current(stage: Stage, ctx: Context) -> bool:
    key = stage_key(stage, ctx.cfg, ctx.run_dir, ctx.options)
    m = manifest.read_manifest(ctx.run_dir, stage.name)
    return bool(m and m.get("complete") and m.get("key") == key)


def run_stage(stage: Stage, ctx: Context, *, order: list[Stage] | None = None, force: bool = False,
              echo: Callable[[str], None] = console.say) -> tuple[dict, bool]:
    """Run `stage` unless it is complete with the same key; returns (its manifest, whether it ran).
    `order`: every stage of the pipeline, for the report (default: this one alone)."""
    run_dir = Path(ctx.run_dir)
    check_inputs(stage, ctx.cfg, run_dir, ctx.options, order)  # before the stage can start Ray
    run_dir.mkdir(parents=True, exist_ok=True)
    key = stage_key(stage, ctx.cfg, run_dir, ctx.options)
    done = manifest.read_manifest(run_dir, stage.name)
    if not force and done and done.get("complete") and done.get("key") == key:
        echo(f"[{stage.name:>10}] already complete  counts={json.dumps(_headline(stage, done['counts']))}")
        return done, False
    t0 = time.time()
    log = run_dir / "logs" / f"{stage.name}.log"
    echo(f"[{stage.name:>10}] start  (Ray, Ray Data and vLLM logs: {log})")
    try:
        with console.logging_to(log):
            result = stage.run(ctx)
    except UserError:
        raise
    except Exception as e:
        raise StageFailed(f"stage {stage.name} failed: {type(e).__name__}: {e}", log) from e
    finally:
        write_report(run_dir, order or [stage])  # a run that stops anywhere still has its report
    total = round(time.time() - t0, 1)
    manifest.write_manifest(run_dir, stage.name, section_values(ctx.cfg, stage.sections), key=key,
                            inputs={"stages": {s: _complete_key(run_dir, s) for s in (*stage.reads, *stage.uses)},
                                    **result.inputs},
                            outputs=result.outputs, counts=result.counts,
                            timings={**result.timings, "total_s": total})
    write_report(run_dir, order or [stage])
    echo(f"[{stage.name:>10}] done in {total:.1f}s  counts={json.dumps(_headline(stage, result.counts))}"
         + (f"  skipped: {result.outputs['skipped']}" if "skipped" in result.outputs else ""))
    return manifest.read_manifest(run_dir, stage.name), True


def _headline(stage: Stage, counts: dict) -> dict:
    return {k: counts[k] for k in stage.headline if k in counts} or counts
