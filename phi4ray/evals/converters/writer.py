"""`convert`: one benchmark file in, a suite JSONL out, and every record that could not become an
item in a quarantine JSONL beside it ({"where": "file:line", "file", "line", "reason", "record"}).

Records stream through one at a time; what is kept per item is its id (to refuse a repeated one,
which the suite loader would reject). Both files are written under temporary names and renamed at
the end, so a reader never sees half a suite. Every record read is written or quarantined:
`Counts.read == written + quarantined` (a CSV header is not a record; blank lines are skipped).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from phi4ray.evals.converters.formats import FORMATS, BadRecord, Format, Source
from phi4ray.evals.converters.readers import EXCERPT, ConvertError, Record, file_errors, shape_of
from phi4ray.evals.schema import SUITE_NAME, EvalItem, SuiteError


@dataclass(frozen=True)
class Counts:
    read: int
    written: int
    quarantined: int
    suite: str
    out: str
    quarantine: str


def quarantine_path(out: Path) -> Path:
    """The default quarantine file: OUT's name with .quarantine.jsonl (gsm8k.jsonl -> gsm8k.quarantine.jsonl)."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".quarantine.jsonl")


def _excerpt(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text[:EXCERPT]


def _item(spec: Format, rec: Record, src: Source) -> EvalItem | str:
    """The record's item, or why it cannot have one."""
    if rec.bad:
        return rec.bad
    try:
        return spec.item(rec, src)
    except (BadRecord, SuiteError) as e:
        return str(e)
    except (TypeError, KeyError, AttributeError, IndexError) as e:  # a shape no check foresaw
        return f"unusable record: {type(e).__name__}: {e}"


def convert(fmt: str, source: str | os.PathLike, out: str | os.PathLike, quarantine: str | os.PathLike | None = None,
            *, suite: str | None = None, seed: int = 0, language: str = "") -> Counts:
    """Convert `source` (a file, or a folder for `math` and `mmlu`) in format `fmt` (a FORMATS name)
    into the suite file `out`. Raises ConvertError, one line, when it cannot run at all."""
    spec = FORMATS.get(fmt)
    if spec is None:
        raise ConvertError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    path, out = Path(source), Path(out)
    qpath = Path(quarantine) if quarantine else quarantine_path(out)
    if not path.exists():
        raise ConvertError(f"{path}: no such file or folder")
    shape = shape_of(path)
    if shape not in spec.readers:
        shapes = ", ".join("a folder" if s == "dir" else f".{s}" for s in spec.readers)
        raise ConvertError(f"{fmt} reads {shapes}; cannot read {path.name}")
    src = Source(path, seed=seed, language=language)
    name = suite or spec.suite(src)
    if not SUITE_NAME.fullmatch(name):
        raise ConvertError(f"suite name {name!r} must be 1-100 characters of letters, digits, '_', '.', '-'")
    if out.resolve() == qpath.resolve() or path.resolve() in (out.resolve(), qpath.resolve()):
        raise ConvertError(f"the input, the output and the quarantine must be three different files ({out}, {qpath})")
    tmp_out, tmp_q = out.with_name(out.name + ".tmp"), qpath.with_name(qpath.name + ".tmp")
    read = written = quarantined = 0
    seen: dict[str, str] = {}  # item id -> where it came from
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        qpath.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp_out, "w", encoding="utf-8") as items, open(tmp_q, "w", encoding="utf-8") as bad:
            for rec in file_errors(spec.readers[shape])(path):
                read += 1
                item = _item(spec, rec, src)
                if isinstance(item, EvalItem) and item.id in seen:
                    item = f"item id {item.id!r} repeats {seen[item.id]}"
                if isinstance(item, str):
                    bad.write(json.dumps({"where": rec.where, "file": rec.file, "line": rec.line, "reason": item,
                                          "record": _excerpt(rec.value)}, ensure_ascii=False) + "\n")
                    quarantined += 1
                else:
                    seen[item.id] = rec.where
                    items.write(json.dumps({**item.to_json(), "suite": name}, ensure_ascii=False) + "\n")
                    written += 1
        if not written:
            os.replace(tmp_q, qpath)
            raise ConvertError(f"{path}: no records" if not read else
                               f"{path}: none of {read} records could be converted; reasons in {qpath}")
        os.replace(tmp_out, out)
        os.replace(tmp_q, qpath)
    except OSError as e:  # the reader's failures are ConvertErrors already: this is the output side
        raise ConvertError(f"cannot write {e.filename or out}: {e.strerror or e}") from None
    finally:
        for tmp in (tmp_out, tmp_q):
            tmp.unlink(missing_ok=True)
    return Counts(read, written, quarantined, name, str(out), str(qpath))


def counts_line(fmt: str, c: Counts) -> str:
    return (f"{fmt}: read {c.read} records: {c.written} items to {c.out} (suite {c.suite}), "
            f"{c.quarantined} quarantined to {c.quarantine}")
