"""A user's row file (JSONL or Parquet, any fsspec path) read as a stream, each bad row kept aside.

The stages that take rows from the user (PTS queries, DPO round 2's prompts, held-out queries,
synthesis's organic questions) read their file the same way: one row at a time, up to the number
they use, a bad row written to a quarantine file with its file:line and the reason, never a crash;
read = used + quarantined. What makes a row good is the caller's `parse`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

from phi4ray.run.errors import MissingInput

READ_ROWS = 1024  # Parquet rows per read: what bounds the reader's memory, not the file's size


class BadLine(str):
    """A JSONL line that is not JSON: the line itself (kept aside as it was), and why."""
    reason: str = ""


class BadRow(ValueError):
    """A row `parse` refuses; the message is the quarantine's reason."""


def rows(path: str) -> Iterator[tuple[str, object]]:
    """(where, row) for every row of a JSONL or Parquet file: where is "file:line" (JSONL) or
    "file:row N" (Parquet); a JSONL line that is not JSON comes as a BadLine."""
    import fsspec  # deferred: only a run with a user's file reads through fsspec

    if path.endswith(".parquet"):
        import pyarrow.parquet as pq  # deferred: as above

        with fsspec.open(path, "rb") as f:
            n = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=READ_ROWS):
                for row in batch.to_pylist():
                    n += 1
                    yield f"{path}:row {n}", row
        return
    with fsspec.open(path, "rt", encoding="utf-8", compression="infer") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except json.JSONDecodeError as e:
                    bad = BadLine(line.rstrip("\n"))
                    bad.reason = f"invalid JSON: {e.msg} at column {e.colno}"
                    yield f"{path}:{lineno}", bad


def load_rows(path: str, parse: Callable[[str, object], object], limit: int, quarantine: Path, *,
              option: str, what: str = "row", errors: tuple[type[Exception], ...] = ()) -> tuple[list, dict]:
    """The first `limit` rows that `parse(where, row)` accepts, as it returns them, and the counts
    {"read", "used", "quarantined"}. A row it refuses (raising BadRow or one of `errors`), and a
    line that is not JSON, goes to `quarantine` as {"where", "reason", "row"}. The caller holds at most `limit`
    rows: the file is read as a stream and reading stops there. `option` names the file's config
    key in errors, `what` a row in them."""
    used, bad = [], []
    read = 0
    try:
        for where, row in rows(path):
            if len(used) == limit:
                break
            read += 1
            try:
                if isinstance(row, BadLine):
                    raise BadRow(row.reason)
                used.append(parse(where, row))
            except (BadRow, *errors) as e:
                bad.append({"where": where, "reason": str(e), "row": row})
    except FileNotFoundError:
        raise MissingInput(f"{option}: {path} does not exist") from None
    quarantine.parent.mkdir(parents=True, exist_ok=True)
    with open(quarantine, "w") as f:
        for b in bad:
            f.write(json.dumps(b, default=str) + "\n")
    if not used:
        raise MissingInput(f"{option}: no valid {what} in {path} ({len(bad)} quarantined, "
                           f"reasons in {quarantine}; first: {bad[0]['reason'] if bad else 'empty file'})")
    return used, {"read": read, "used": len(used), "quarantined": len(bad)}


def check_files_exist(files: list[str], option: str) -> None:
    """Each of `files` (any fsspec path) is a file; else an error naming the `option` that set it."""
    import fsspec  # deferred: as in rows()

    for f in files:
        fs, p = fsspec.core.url_to_fs(f)
        if not fs.isfile(p):
            raise MissingInput(f"{option}: {f} is not a file")
