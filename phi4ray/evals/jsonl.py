"""Suites as JSONL files: one item per line, `EvalItem.to_json()` plus the suite's `suite` and
`version` (repeated on each line, so every line stands alone). A user adds a suite by writing such
a file; every line is validated on load and a bad one raises `SuiteError` naming file:line and
the field.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from phi4ray.evals.schema import EvalItem, Suite, SuiteError


def load_suite_jsonl(path: str | os.PathLike, name: str | None = None) -> Suite:
    """A suite from a JSONL file, one item per line (blank lines are skipped). Its name is `name`,
    else the lines' `suite` field, else the file's stem; its version the lines' `version` field,
    else a hash of the file's bytes (so a changed file is a new version)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except OSError as e:
        raise SuiteError(f"{path}: cannot read suite file: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise SuiteError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    items: list[EvalItem] = []
    first_line: dict[str, int] = {}
    header: dict[str, tuple[Any, int]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SuiteError(f"{where}: invalid JSON: {e.msg} at column {e.colno}") from None
        try:
            item = EvalItem.from_json(obj)
        except (SuiteError, TypeError) as e:
            raise SuiteError(f"{where}: {e}") from None
        for key in ("suite", "version"):
            if key in obj:
                if not isinstance(obj[key], str):
                    raise SuiteError(f"{where}: {key}={obj[key]!r} must be a string")
                seen = header.setdefault(key, (obj[key], lineno))
                if seen[0] != obj[key]:
                    raise SuiteError(f"{where}: {key}={obj[key]!r} differs from {seen[0]!r} on line {seen[1]}")
        if item.id in first_line:
            raise SuiteError(f"{where}: id {item.id!r} repeats line {first_line[item.id]}")
        first_line[item.id] = lineno
        items.append(item)
    if not items:
        raise SuiteError(f"{path}: no items")
    version = header["version"][0] if "version" in header else "sha256:" + hashlib.sha256(raw).hexdigest()[:16]
    name = name or (header["suite"][0] if "suite" in header else path.stem)
    try:
        return Suite(name, version, tuple(items))
    except SuiteError as e:
        raise SuiteError(f"{path}: {e}") from None


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_suite_jsonl(suite: Suite, path: str | os.PathLike) -> Path:
    """Write the suite as JSONL (atomically: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for item in suite.items:
            line = {**item.to_json(), "suite": suite.name, "version": suite.version}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
