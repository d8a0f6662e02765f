"""Planning the per-document half of curation: every input file is a shard with a stable id, and
each shard's rows, kept or not, go to one file written atomically, RUN/curate/shards/<shard>.parquet,
so a rerun after a crash redoes only the shards without a file.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq

from phi4ray.curate.builtin import write_builtin_raw
from phi4ray.curate.documents import DocumentFilters
from phi4ray.curate.readers import Input, list_inputs, read_input


def curate_inputs(run_dir: Path, cfg) -> list[tuple[str, str]]:
    """(source, path) of every input: `curate.inputs`, else the built-in raw corpus (written under
    RUN/raw on first use)."""
    c = cfg.curate
    if c.inputs:
        return c.parsed_inputs()
    raw = write_builtin_raw(Path(run_dir) / "raw" / str(c.builtin_docs), c.builtin_docs)
    return [tuple(e.split("=", 1)) for e in raw]


def plan_shards(run_dir: Path, cfg) -> tuple[list[dict], list[str]]:
    """Every input file as a shard {shard, source, uri, format, root}, sorted and with stable ids; and the
    files skipped as not a known format."""
    shards, skipped = [], []
    inputs = curate_inputs(run_dir, cfg)
    for source, path in inputs:
        found, unknown = list_inputs([path], cfg.curate.reader)
        skipped += unknown
        for inp in found:
            sid = hashlib.sha1(f"{source}\0{inp.uri}".encode()).hexdigest()[:16]
            shards.append({"shard": sid, "source": source, "uri": inp.uri, "format": inp.format, "root": inp.root})
    if not shards:
        raise FileNotFoundError(f"curate: no readable input files in {inputs}")
    return sorted(shards, key=lambda s: s["shard"]), skipped


def shard_file(out_dir: Path, shard: dict) -> Path:
    return Path(out_dir) / f"{shard['shard']}.parquet"


def pending_shards(shards: list[dict], out_dir: Path) -> list[dict]:
    """The shards without a finished file."""
    return [s for s in shards if not shard_file(out_dir, s).is_file()]


def filter_shard(shard: dict, filters: DocumentFilters, out_dir: Path) -> int:
    """Read one shard (with the reader settings of the filters' config), run the document filters,
    write its file atomically; returns its row count."""
    inp = Input(shard["uri"], shard["format"], shard["root"])
    table = filters(list(read_input(inp, shard["source"], filters.config.reader)))
    dest = shard_file(out_dir, shard)
    tmp = dest.with_name(dest.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(dest)  # atomic: a file here is a finished shard
    return table.num_rows
