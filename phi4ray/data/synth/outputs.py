"""What the synthesize stage leaves behind, from the chunks' rows.

- RUN/synthetic/web_rewrites/rewrite.parquet and RUN/synthetic/synthetic/<step>.parquet: kept rows
  as training documents (`text` + provenance, `OUT_SCHEMA`), only non-empty files (the tokenize
  stage reads every file there);
- RUN/synthetic/long/long.parquet: qa's pairs as long-context rows (phi4ray.data.synth.long, same
  schema), for midtraining only; written as they are made, `LONG_BATCH` rows at a time;
- RUN/synthesize/dropped/<step>.parquet: every other row, with its status;
- the verified toy source's documents and rejects (phi4ray.toy.synth) beside them, as `toy.parquet`;
- the per-step report (`step_report`): counts, drop reasons, a few examples.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from phi4ray.data.mixtures import SYNTHETIC_LONG
from phi4ray.data.synth.chunks import write_table
from phi4ray.data.synth.long import STEP as LONG
from phi4ray.data.synth.steps import STEPS, why
from phi4ray.toy.synth import DROPPED_SCHEMA as TOY_DROPPED_SCHEMA
from phi4ray.toy.synth import STEP as TOY
from phi4ray.toy.synth import ToySource

EXCERPT = 300  # characters of a seed or an output a report example shows
LONG_BATCH = 64  # long rows per write: at the default midtraining context, a few MB held at once

OUT_SCHEMA = pa.schema([("text", pa.string()), ("seed_id", pa.string()), ("step", pa.string()),
                        ("kind", pa.string()), ("template_id", pa.string()), ("seed_source", pa.string()),
                        ("meta", pa.string())])


def _fields(r: dict, *names: str) -> str | None:
    """`name: value` lines of a row's set fields: what a report example shows of a step's output."""
    parts = [f"{n}: {r[n]}" for n in names if r.get(n) not in (None, "")]
    return "\n".join(parts) or None


def _excerpt(text) -> str | None:
    return None if text is None else (text if len(text) <= EXCERPT else text[:EXCERPT] + "…")


def check_counts(step: str, seeds: list[dict], rows: list[dict]) -> None:
    """Every seed in shows up in the rows, and no row belongs to a seed that was not in."""
    want, got = [x["seed_id"] for x in seeds], {r["seed_id"] for r in rows}
    if len(set(want)) != len(want) or set(want) != got:
        raise AssertionError(f"synthesize: step {step!r}: {len(want)} seeds in ({len(set(want))} distinct ids) "
                             f"but {len(got)} distinct seed_ids in kept + dropped rows; missing "
                             f"{sorted(set(want) - got)[:5]}, unexpected {sorted(got - set(want))[:5]}")


def step_report(step: str, seeds: list[dict], rows: list[dict], chunks: int, redone: int) -> dict:
    spec = STEPS[step]
    ok = [r for r in rows if r["status"] == "ok"]
    reasons = Counter(why(r) for r in rows if r["status"] != "ok")
    by_id = {x["seed_id"]: x for x in seeds}
    shown: list[dict] = []
    # up to 3 rows, each from another seed: kept rows first, then one per drop reason, then any
    for pick in (lambda r: r["status"] == "ok", lambda r: why(r) not in {why(x) for x in shown}, lambda r: True):
        for r in rows:
            if len(shown) < 3 and pick(r) and r["seed_id"] not in {x["seed_id"] for x in shown}:
                shown.append(r)
    parsed, read = spec.form(rows)
    return {"seeds_in": len(seeds), "rows_out": len(rows), "ok": len(ok), "dropped": dict(sorted(reasons.items())),
            "acceptance_rate": round(len(ok) / len(rows), 4) if rows else None,
            # of the teacher's answers a parser read, the share in the form it asked for
            "answers_read": read, "parse_rate": round(parsed / read, 4) if read else None,
            "seeds_with_output": len({r["seed_id"] for r in ok}),
            "llm_errors": reasons.get("llm_error", 0), "chunks": chunks, "chunks_run": redone,
            "examples": [{"seed_id": r["seed_id"], "status": r["status"],
                          "seed": _excerpt(by_id[r["seed_id"]].get(spec.seed_field)),
                          "output": _excerpt(_fields(r, *spec.shown))} for r in shown]}


def output_rows(step: str, rows: list[dict], seeds: list[dict], web_rewrite_kinds) -> dict[str, list[dict]]:
    """Kept rows as training documents, by mixture source."""
    spec, source = STEPS[step], {x["seed_id"]: x.get("source") for x in seeds}
    out: dict[str, list[dict]] = {"web_rewrites": [], "synthetic": []}
    for r in rows:
        text = spec.text(r) if r["status"] == "ok" else None
        if not text:
            continue
        kind = r.get("kind") or step
        meta = {k: v for k, v in r.items() if k not in ("text", "status", "seed_id", "template_id") and v is not None}
        dest = "web_rewrites" if step == "rewrite" and kind in web_rewrite_kinds else "synthetic"
        out[dest].append({"text": text, "seed_id": r["seed_id"], "step": step, "kind": kind,
                          "template_id": r["template_id"], "seed_source": source.get(r["seed_id"]),
                          "meta": json.dumps(meta, ensure_ascii=False, default=str)})
    return out


def dropped_rows(step: str, rows: list[dict]) -> list[dict]:
    """The rows that make no training document: a status other than ok, or no text."""
    return [r for r in rows if r["status"] != "ok" or not STEPS[step].text(r)]


def write_long(made: Iterable[tuple[str, dict | None]], path: Path) -> Counter:
    """The rows of (outcome, row) pairs to `path`, `LONG_BATCH` at a time as they come (no file
    when no row is made), and the count of each outcome."""
    outcomes: Counter = Counter()
    batch: list[dict] = []
    writer = None

    def flush() -> None:
        nonlocal writer
        if writer is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(path, OUT_SCHEMA)
        writer.write_table(pa.Table.from_pylist(batch, schema=OUT_SCHEMA))
        batch.clear()

    try:
        for outcome, row in made:
            outcomes[outcome] += 1
            if row is not None:
                batch.append(row)
                if len(batch) == LONG_BATCH:
                    flush()
        if batch:
            flush()
    finally:
        if writer is not None:
            writer.close()
    return outcomes


def _swap_in(tmp: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def write_outputs(run_dir: Path, work: Path, steps: dict[str, tuple[list[dict], list[dict]]], s,
                  toy: ToySource | None = None,
                  long: Iterable[tuple[str, dict | None]] = ()) -> tuple[dict[str, int], Counter]:
    """RUN/synthetic (kept, only non-empty files) and RUN/synthesize/dropped, each written aside and
    swapped in whole, with the toy source's files when there is one and the `long` rows
    (phi4ray.data.synth.long.long_rows); the kept rows by destination, the long rows' outcomes."""
    kept_tmp, dropped_tmp = run_dir / "synthetic.partial", work / "dropped.partial"
    for d in (kept_tmp, dropped_tmp):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    counts: dict[str, int] = {"web_rewrites": 0, "synthetic": 0}
    for step, (seeds, rows) in steps.items():
        for dest, out in output_rows(step, rows, seeds, s.web_rewrite_kinds).items():
            if out:
                write_table(pa.Table.from_pylist(out, schema=OUT_SCHEMA), kept_tmp / dest / f"{step}.parquet")
                counts[dest] += len(out)
        write_table(pa.Table.from_pylist(dropped_rows(step, rows), schema=STEPS[step].schema),
                    dropped_tmp / f"{step}.parquet")
    if toy is not None:
        if toy.docs:
            write_table(pa.Table.from_pylist(toy.docs, schema=OUT_SCHEMA), kept_tmp / "synthetic" / f"{TOY}.parquet")
            counts["synthetic"] += len(toy.docs)
        write_table(pa.Table.from_pylist(toy.dropped, schema=TOY_DROPPED_SCHEMA), dropped_tmp / f"{TOY}.parquet")
    long_outcomes = write_long(long, kept_tmp / SYNTHETIC_LONG / f"{LONG}.parquet")
    _swap_in(kept_tmp, run_dir / "synthetic")
    _swap_in(dropped_tmp, work / "dropped")
    return counts, long_outcomes
