"""The synthesize stage's work on any runner: seeds -> chunks -> rows -> outputs and report.

    RUN/curated/<source>/*.parquet (else the built-in corpus)
      -> each source's candidate documents, first by rank (the runner's `pick_documents`)
      -> seeds per step from those (phi4ray.data.synth.seeds); the question steps' also from
         `synth.questions_file` (read first: a file without a valid row stops the stage before any
         teacher call; bad rows in RUN/synthesize/quarantine_questions.jsonl)
      -> chunks of `synth.chunk_size` seeds (phi4ray.data.synth.chunks), the missing ones run by a
         runner, each writing RUN/synthesize/<step>/<chunk_id>.parquet
      -> plurality and agents after qa (qa's questions, deduplicated across seeds, are among their seeds)
      -> with synth.toy_problems, the verified toy source (phi4ray.toy.synth: no teacher, no chunks)
      -> qa's kept pairs asked after their source documents, midtraining's long rows
         (phi4ray.data.synth.long: no teacher; RUN/synthetic/long)
      -> RUN/synthetic/..., RUN/synthesize/dropped/<step>.parquet (phi4ray.data.synth.outputs),
         RUN/synthesize/report.json

A runner picks the candidate documents and runs a list of chunks: `LocalRunner` (one engine, in
this process: tests, debugging) or actors.data.synthesize.RayRunner (a Ray Data pass over the documents,
Ray Data actors against the fleet or an endpoint for the chunks). Everything after
the chunks (qa dedupe, outputs, report) is recomputed from the chunk files, so a run resumed after a
crash equals an uninterrupted one (the fleet seeds sampling per prompt, see actors/serve/fleet_engine.py).
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Protocol

from phi4ray.data.synth.chunks import Chunk, clean_stale, plan_chunks, process_chunk, read_rows, run_missing
from phi4ray.data.synth.long import long_limits, long_report, long_rows
from phi4ray.data.synth.outputs import check_counts, step_report, write_outputs
from phi4ray.data.synth.seeds import (
    code_seeds,
    dedupe_questions,
    organic_questions,
    pick_documents,
    plurality_seeds,
    prose_seeds,
    revise_seeds,
)
from phi4ray.data.synth.steps import QUESTION_STEPS, STEPS
from phi4ray.run.console import say
from phi4ray.run.stage import StageResult
from phi4ray.toy.synth import STEP as TOY_STEP
from phi4ray.toy.synth import toy_source

WORK = "synthesize"  # RUN/<WORK>: chunk files, dropped rows, report.json
QUARANTINE = "quarantine_questions.jsonl"  # RUN/<WORK>/<QUARANTINE>: synth.questions_file's bad rows


class Runner(Protocol):
    name: str  # the teacher's name: part of every chunk id

    def pick_documents(self, run_dir: Path, cfg) -> tuple[str, dict[str, list[dict]]]:
        """(where from, {source: candidate documents}): phi4ray.data.synth.seeds.pick_documents' result."""

    def run(self, chunks: list[Chunk], s, work: Path) -> None:
        """Run every chunk, each writing its file."""

    def timings(self) -> dict:
        """Extra timings for the manifest (a fleet's start-up)."""

    def close(self) -> None:
        """Release what the runner holds."""


class LocalRunner:
    """Chunks one after another in this process, on one engine and one event loop (an endpoint
    client binds to the loop it first runs on): tests, debugging."""

    def __init__(self, engine, name: str = "local"):
        self.engine, self.name, self.loop = engine, name, asyncio.new_event_loop()

    def pick_documents(self, run_dir: Path, cfg) -> tuple[str, dict[str, list[dict]]]:
        return pick_documents(run_dir, cfg)

    def run(self, chunks: list[Chunk], s, work: Path) -> None:
        for c in chunks:
            self.loop.run_until_complete(process_chunk(c, self.engine, s, work))

    def timings(self) -> dict:
        return {}

    def close(self) -> None:
        self.loop.close()


def synthesize(run_dir: Path, cfg, runner: Runner) -> StageResult:
    """The stage's work on `runner`; chunks with a file already are not run again."""
    run_dir = Path(run_dir).resolve()
    s, work, t0 = cfg.synth, run_dir / WORK, time.time()
    organic, read = organic_questions(cfg, work / QUARANTINE) if s.questions_file else ([], None)
    origin, docs = runner.pick_documents(run_dir, cfg)
    passages = prose_seeds(docs, s)
    seeds = {"rewrite": passages, "revise": revise_seeds(passages), "reversal": code_seeds(docs, s), "qa": passages}
    order = [st for st in STEPS if st in s.steps]  # recipe order; the question steps last
    plans: dict[str, list[Chunk]] = {}
    rows: dict[str, list[dict]] = {}
    redone: dict[str, int] = {}
    asked = [st for st in order if st in QUESTION_STEPS]
    for phase in ([st for st in order if st not in QUESTION_STEPS], asked):
        if phase is asked and asked:
            seeds.update(dict.fromkeys(asked, plurality_seeds(rows.get("qa", []), cfg, organic)))
        for st in phase:
            plans[st] = plan_chunks(st, seeds[st], cfg, runner.name)
        ran = run_missing([c for st in phase for c in plans[st]], runner, s, work)  # one pipeline per phase
        for st in phase:
            redone[st] = sum((st, c.chunk_id) in ran for c in plans[st])
            rows[st] = read_rows(plans[st], work)
        if "qa" in phase:
            dedupe_questions(rows["qa"])
    for st in order:
        check_counts(st, seeds[st], rows[st])
    clean_stale(work, plans)
    toy = toy_source(cfg) if s.toy_problems else None  # no teacher: in this process, a second for thousands
    limits = long_limits(cfg)
    made = long_rows(seeds["qa"], rows["qa"], docs, s, limits, cfg.seed) if "qa" in order else ()
    outputs, outcomes = write_outputs(run_dir, work, {st: (seeds[st], rows[st]) for st in order}, s, toy, made)
    long = long_report(outcomes, limits) if "qa" in order else None
    questions = {"path": s.questions_file, **read, "quarantine": str(work / QUARANTINE)} if read else None
    report = {"teacher": runner.name, "seeds_from": origin, "outputs": outputs,
              **({"questions_file": questions} if questions else {}),
              "steps": {st: step_report(st, seeds[st], rows[st], len(plans[st]), redone[st]) for st in order},
              **({"toy": toy.report} if toy else {}), **({"long": long} if long else {}),
              "wall_s": round(time.time() - t0, 1), **runner.timings()}
    work.mkdir(parents=True, exist_ok=True)
    (work / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    for st, r in report["steps"].items():
        say(f"synthesize: {st}: {r['seeds_in']} seeds -> {r['rows_out']} rows, {r['ok']} kept "
            f"({r['acceptance_rate']}); dropped {r['dropped']}")
    if questions:
        say(f"synthesize: {s.questions_file}: {questions['read']} rows read -> {questions['used']} questions, "
            f"{questions['quarantined']} quarantined ({questions['quarantine']})")
    if toy:
        t = toy.report
        say(f"synthesize: {TOY_STEP}: {t['generated']} problems -> {t['kept']} kept, verified by the oracle "
            f"({t['rejected']} rejected); none of {t['heldout_checked']} held-out questions among them")
    if long:
        say(f"synthesize: long: {long['pairs']} qa pairs -> {long['made']} long rows of {long['min_chars']}.."
            f"{long['max_chars']} chars; {long['too_short']} too short, {long['too_long']} too long, "
            f"{long['no_document']} without their document")
    steps = {st: {k: v for k, v in r.items() if k != "examples"} for st, r in report["steps"].items()}
    kept = sum(outputs.values())
    toy_counts = {k: toy.report[k] for k in ("generated", "kept", "rejected")} if toy else None
    # a step's rows are kept or dropped; the toy problems are kept or rejected
    dropped = sum(r["rows_out"] for r in steps.values()) - kept + (toy.report["generated"] if toy else 0)
    counts = {"seeds": sum(r["seeds_in"] for r in steps.values()), "kept": kept, "dropped": dropped,
              "outputs": outputs, "steps": steps, **({"toy": toy_counts} if toy else {}),
              # made from kept qa pairs, so neither in `kept` nor in `dropped`
              **({"long": {k: v for k, v in long.items() if not k.endswith("_chars")}} if long else {}),
              **({"questions_file": read} if read else {})}
    return StageResult(counts=counts, inputs={"seeds_from": origin, "teacher": runner.name,
                                              **({"questions_file": s.questions_file} if read else {})},
                       outputs={"synthetic": str(run_dir / "synthetic"), "dropped": str(work / "dropped"),
                                "report": str(work / "report.json"),
                                **({"quarantine_questions": questions["quarantine"]} if read else {})},
                       timings={"wall_s": report["wall_s"], **runner.timings()})
