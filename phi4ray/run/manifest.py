"""Per-stage manifests under RUN/manifests: what ran, on what, with which config, and the counts.

A manifest carries a `key`; a stage whose manifest says it completed under the key it would have
now is a no-op on rerun (phi4ray.run.stage computes stage keys; a finer-grained step inside a stage,
such as midtraining's own tokenize pass, may key its manifest by the hash of its own config).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path


def jsonable(value):
    # sets print in hash order, which changes from process to process: sort them, or the same
    # config would hash differently on every run and no stage would ever be complete
    return sorted(value, key=str) if isinstance(value, (set, frozenset)) else str(value)


def config_hash(config) -> str:
    blob = json.dumps(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config,
                      sort_keys=True, default=jsonable)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def manifest_path(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / "manifests" / f"{stage}.json"


def read_manifest(run_dir: str | Path, stage: str) -> dict | None:
    p = manifest_path(run_dir, stage)
    if not p.exists():
        return None
    return json.loads(p.read_text())


def write_manifest(run_dir: str | Path, stage: str, config, *, inputs: dict, outputs: dict,
                   counts: dict, timings: dict, key: str | None = None) -> Path:
    p = manifest_path(run_dir, stage)
    p.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "stage": stage, "complete": True, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "key": key or config_hash(config),
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config,
        "inputs": inputs, "outputs": outputs, "counts": counts, "timings": timings,
    }
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2, default=jsonable))
    tmp.replace(p)  # atomic: a crash never leaves a half-written "complete" manifest
    return p


def read_checkpoint_lines(path: str | Path, key: str = "query_id", keep=None) -> dict[str, dict]:
    """Per-item resume points: a JSONL file with one finished record per line, appended as each
    item finishes (PTS queries, judged prompts). Returns {record[key]: record}; a line cut by a
    crash is skipped (that item is simply done again); `keep(record)` filters (e.g. same template)."""
    done: dict[str, dict] = {}
    p = Path(path)
    if p.exists():
        for line in p.read_text().splitlines():  # json.dumps escapes every line separator
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and key in r and (keep is None or keep(r)):
                done[r[key]] = r
    return done
