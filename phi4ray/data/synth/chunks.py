"""Chunks: the unit of synthesis work and of resume.

A chunk is `synth.chunk_size` consecutive seeds of one step. Its id is its position plus a hash of
what decides its rows (the step's config, the teacher, the run seed, the prompt templates, its
seeds), so a rerun skips every chunk whose file RUN/synthesize/<step>/<chunk_id>.parquet exists and
redoes only the missing ones; a changed config gets new ids, never a stale file. A chunk's file is
written at once (tmp file + rename), so a crash costs at most the chunks in flight. A row whose LLM
call failed is a finished record ("llm_error: ..."), so its chunk is not redone on a rerun: delete
the chunk file to retry it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from phi4ray.data.synth.steps import STEPS
from phi4ray.data.synth.templates import template_digests


@dataclass(frozen=True)
class Chunk:
    step: str
    chunk_id: str
    seeds: list[dict]

    def path(self, work: Path) -> Path:
        return Path(work) / self.step / f"{self.chunk_id}.parquet"


def plan_chunks(step: str, seeds: list[dict], cfg, teacher: str) -> list[Chunk]:
    """Consecutive chunks of `synth.chunk_size` seeds. The id hashes what decides the rows: whether
    answers are held to their forms (synth.call.structured) does; how the calls are made (the rest
    of synth.call: concurrency, batching, retries) is left out: it changes no row."""
    s = cfg.synth
    key = json.dumps({"step": step, "config": dataclasses.asdict(getattr(s, step)), "teacher": teacher,
                      "seed": cfg.seed, "templates": template_digests(), "structured": s.call.structured},
                     sort_keys=True, default=str)
    out = []
    for i in range(0, len(seeds), s.chunk_size):
        part = seeds[i:i + s.chunk_size]
        digest = hashlib.sha256((key + json.dumps(part, sort_keys=True)).encode()).hexdigest()[:12]
        out.append(Chunk(step, f"{i // s.chunk_size:05d}-{digest}", part))
    return out


def write_table(table: pa.Table, path: Path) -> None:
    """Atomic: a reader (or a rerun) sees the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


async def process_chunk(chunk: Chunk, engine, s, work: Path) -> dict:
    """Run one chunk's step on `engine` and write its rows; a summary for the driver's log."""
    t0 = time.perf_counter()
    spec = STEPS[chunk.step]
    rows = await spec.run(engine, chunk.seeds, config=getattr(s, chunk.step), call=s.call)
    write_table(pa.Table.from_pylist(rows, schema=spec.schema), chunk.path(work))
    return {"step": chunk.step, "chunk_id": chunk.chunk_id, "seeds": len(chunk.seeds), "rows": len(rows),
            "wall_s": round(time.perf_counter() - t0, 2)}


def read_rows(chunks: list[Chunk], work: Path) -> list[dict]:
    """The step's rows in chunk order (= seed order)."""
    return [r for c in chunks for r in pq.read_table(c.path(work)).to_pylist()]


def run_missing(chunks: list[Chunk], runner, s, work: Path) -> set[tuple[str, str]]:
    """Run the chunks without a file on `runner`; the (step, chunk_id)s that ran."""
    todo = [c for c in chunks if not c.path(work).is_file()]
    if todo:
        runner.run(todo, s, work)
    lost = [c.chunk_id for c in todo if not c.path(work).is_file()]
    if lost:
        raise RuntimeError(f"synthesize: chunk(s) {lost} finished without writing their rows")
    return {(c.step, c.chunk_id) for c in todo}


def clean_stale(work: Path, plans: dict[str, list[Chunk]]) -> None:
    """Chunk files of other configs (and tmp files of crashed writes) in the steps that ran."""
    for step, chunks in plans.items():
        keep = {c.path(work).name for c in chunks}
        for f in (work / step).glob("*") if (work / step).is_dir() else []:
            if f.name not in keep:
                f.unlink()
