"""Per-stage manifests under RUN/manifests: what ran, on what, with which config, and the counts.

A stage whose manifest says it completed with the same config is a no-op on rerun.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path


def config_hash(config) -> str:
    blob = json.dumps(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config,
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def manifest_path(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / "manifests" / f"{stage}.json"


def read_manifest(run_dir: str | Path, stage: str) -> dict | None:
    p = manifest_path(run_dir, stage)
    if not p.exists():
        return None
    return json.loads(p.read_text())


def is_complete(run_dir: str | Path, stage: str, config) -> bool:
    m = read_manifest(run_dir, stage)
    return bool(m and m.get("complete") and m.get("config_hash") == config_hash(config))


def write_manifest(run_dir: str | Path, stage: str, config, *, inputs: dict, outputs: dict,
                   counts: dict, timings: dict) -> Path:
    p = manifest_path(run_dir, stage)
    p.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "stage": stage, "complete": True, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config_hash": config_hash(config),
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config,
        "inputs": inputs, "outputs": outputs, "counts": counts, "timings": timings,
    }
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2, default=str))
    tmp.replace(p)  # atomic: a crash never leaves a half-written "complete" manifest
    return p
