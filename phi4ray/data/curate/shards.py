"""Planning the per-document half of curation: every input file is a shard with a stable id, and
each shard's rows, kept or not, go to one file written atomically, RUN/curate/shards/<shard>.parquet,
so a rerun after a crash redoes only the shards without a file.

A shard streams: its reader's rows go through the document filters in batches of at most
`curate.batch_bytes` of text (`curate.batch_rows` rows), each batch appended to the file as it is
filtered, so a worker holds one batch, never the whole file.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow.parquet as pq

from phi4ray.data.curate.builtin import write_builtin_raw
from phi4ray.data.curate.documents import DocumentFilters
from phi4ray.data.curate.readers import Input, list_inputs, read_input


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


def batches(rows: Iterable[dict], max_bytes: int, max_rows: int) -> Iterator[list[dict]]:
    """Consecutive rows in lists of at most `max_rows`, cut once their texts reach `max_bytes` of
    memory (sys.getsizeof: what the strings occupy, 1 to 4 bytes a character). A row is never
    split: a lone row over the budget is a batch of its own (the reader already caps a record
    at reader.max_doc_bytes)."""
    batch, size = [], 0
    for row in rows:
        batch.append(row)
        size += sys.getsizeof(row.get("text") or "")
        if size >= max_bytes or len(batch) >= max_rows:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def filter_shard(shard: dict, filters: DocumentFilters, out_dir: Path) -> int:
    """Read one shard (with the reader settings of the filters' config) batch by batch, run the
    document filters on each batch and append it to the shard's file, which is moved into place
    when the whole input has been read; returns its row count."""
    inp = Input(shard["uri"], shard["format"], shard["root"])
    c = filters.config
    dest = shard_file(out_dir, shard)
    tmp = dest.with_name(dest.name + ".tmp")
    n = 0
    with pq.ParquetWriter(tmp, filters.schema) as writer:  # an input without rows gives an empty file
        for batch in batches(read_input(inp, shard["source"], c.reader), c.batch_bytes, c.batch_rows):
            table = filters(batch)
            writer.write_table(table)
            n += table.num_rows
    tmp.replace(dest)  # atomic: a file here is a finished shard
    return n
