"""Streaming readers of benchmark files: each yields one `Record` at a time, so memory holds one
line, one CSV record, one per-problem JSON file or one Parquet row group, whatever the file's size.

A record that cannot be read (bytes that are not UTF-8, a line that is not JSON, a CSV record with
the wrong number of fields) comes out as a Record with `bad` set to the reason, never as an
exception: the converter quarantines it and goes on. A file that cannot be read at all (missing,
no permission, not Parquet, a broken gzip stream) raises `ConvertError`, one line naming the file.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from phi4ray.run.errors import UserError

EXCERPT = 1000  # characters of a bad record kept in the quarantine


class ConvertError(UserError):
    """A conversion that cannot run: an unknown format, an unreadable file, no records at all."""


@dataclass(frozen=True)
class Record:
    file: str  # the file it came from
    line: int  # 1-based: the line (JSONL, TSV), the record's first line (CSV), the row (Parquet), 1 (a JSON file)
    value: Any = None  # a dict (JSON, Parquet, CSV with a header), a list (CSV), a str (TSV line)
    bad: str = ""  # why the record could not be read; `value` then holds what was read of it, if anything

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


Reader = Callable[[Path], Iterator[Record]]


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def file_errors(reader: Reader) -> Reader:
    """The reader, with a failure of the file itself raised as a one-line ConvertError."""
    def read(path: Path) -> Iterator[Record]:
        try:
            yield from reader(path)
        except (OSError, EOFError, zlib.error) as e:
            raise ConvertError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
        except pa.ArrowException as e:
            raise ConvertError(f"{path}: not a readable Parquet file: {str(e).splitlines()[0]}") from None
    return read


def text_lines(path: Path) -> Iterator[Record]:
    """Each non-blank line as text, end of line stripped (a `.gz` file is read through gzip)."""
    with _open(path) as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield Record(str(path), n, raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as e:
                yield Record(str(path), n, raw[:EXCERPT].decode("utf-8", "replace"), f"not UTF-8 (byte {e.start})")


def _parsed(rec: Record, text: str) -> Record:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        detail = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else type(e).__name__
        return replace(rec, value=text[:EXCERPT], bad=f"invalid JSON: {detail}")
    if not isinstance(obj, dict):
        return replace(rec, value=text[:EXCERPT], bad=f"a record must be a JSON object, got {type(obj).__name__}")
    return replace(rec, value=obj)


def jsonl_records(path: Path) -> Iterator[Record]:
    """One JSON object per line (JSON Lines; `.gz` too)."""
    for rec in text_lines(path):
        yield rec if rec.bad else _parsed(rec, rec.value)


def json_file(path: Path) -> Iterator[Record]:
    """A whole file as one JSON object (MATH's per-problem files)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        yield Record(str(path), 1, raw[:EXCERPT].decode("utf-8", "replace"), f"not UTF-8 (byte {e.start})")
        return
    yield _parsed(Record(str(path), 1), text)


def each_file(suffix: str, reader: Reader) -> Reader:
    """A folder's files ending in `suffix`, at any depth, in sorted order, each through `reader`."""
    def _raise(e: OSError) -> None:
        raise e

    def read(root: Path) -> Iterator[Record]:
        for folder, dirs, names in os.walk(root, onerror=_raise):
            dirs.sort()
            for name in sorted(names):
                if name.endswith(suffix):
                    yield from reader(Path(folder, name))
    return read


def csv_rows(path: Path) -> Iterator[Record]:
    """Each CSV record as a list of fields (a quoted field may span lines); blank records skipped."""
    with io.TextIOWrapper(_open(path), encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                if reader.line_num < start:  # nothing consumed: the reader cannot go on past it
                    raise ConvertError(f"{path}:{start}: unreadable CSV: {e}") from None
                yield Record(str(path), start, None, f"bad CSV record: {e}")
                continue
            if not any(field.strip() for field in row):
                continue
            try:
                "".join(row).encode("utf-8")  # undecodable bytes came in as lone surrogates
            except UnicodeEncodeError:
                yield Record(str(path), start, None, "not UTF-8")
                continue
            yield Record(str(path), start, row)


def csv_dicts(path: Path) -> Iterator[Record]:
    """CSV records as {column: field} by the header (the first record, which is not itself a record)."""
    header: list[str] | None = None
    for rec in csv_rows(path):
        if header is None:
            if rec.bad:
                raise ConvertError(f"{rec.where}: cannot read the CSV header: {rec.bad}")
            header = [name.strip() for name in rec.value]
        elif rec.bad:
            yield rec
        elif len(rec.value) != len(header):
            yield replace(rec, bad=f"{len(rec.value)} fields where the header has {len(header)}")
        else:
            yield replace(rec, value=dict(zip(header, rec.value)))


def parquet_rows(path: Path) -> Iterator[Record]:
    """Each row as a dict, one row group in memory at a time; `line` is the row's 1-based number."""
    with pq.ParquetFile(path) as pf:
        row = 0
        for group in range(pf.num_row_groups):
            for obj in pf.read_row_group(group).to_pylist():
                row += 1
                yield Record(str(path), row, obj)


def shape_of(path: Path) -> str:
    """What a path is, for choosing its reader: "dir", or its extension ("jsonl", "parquet", ...)
    with a final ".gz" ignored."""
    if path.is_dir():
        return "dir"
    name = path.name.lower().removesuffix(".gz")
    return name.rsplit(".", 1)[1] if "." in name else ""
