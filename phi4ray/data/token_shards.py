"""From text files to a run's token shards, one bounded piece at a time: the two passes that
actors/data/tokenize.py runs on Ray Data, and the record that lets an unchanged mixture skip the work.

1. `tokenize_file`: one input file's `text` column, streamed in record batches, into a file of
   document token ids (RUN/tokenized/<file key>.parquet, kept across mixtures: midtraining reads
   the same folders as pretraining) and its summary (rows read, quarantine reasons). Then
   `source_stats`: per source reading that file, documents kept or too short and the tokens one
   pass offers, from the token-count column alone.
2. The driver turns those per-file counts into the mixture plan (epochs per source,
   `phi4ray.data.packing.mixture_plan`) and cuts each source's files into pack groups (`pack_groups`).
3. `pack_group`: one group's documents, sampled to the plan (`DocCopies`: systematic sampling,
   exact totals, no permutation of the corpus anywhere), packed into seq_len + 1 rows and
   written as shards named by source and group. Each group drops at most one partial row.

Nothing here holds more than a record batch of documents and one shard of rows. The output does
not depend on how many workers ran: every file's and group's output is a pure function of its
inputs, the config and the seed. Rows are grouped by source in the shards; the training reader's
shuffle window mixes them (phi4ray.data.row_stream).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from phi4ray.data.packing import MixtureConfig, PackStats, Source, pack, plan_shares
from phi4ray.model.tokenizer import tokenizer_for
from phi4ray.run.manifest import config_hash

# why a row is quarantined ("" = kept)
NULL_TEXT, NOT_STRING, EMPTY_TEXT = "null text", "non-string text", "empty text"
# why a well-formed document is left out of a source (`Source.min_tokens`)
TOO_SHORT = "shorter than min_tokens"
RECORD = "tokenize_record.json"  # in the output folder, written with the shards
READ_ROWS = 1024  # documents per record batch, in both passes
ROW_BYTES = 64 << 10  # a shard's row groups hold about this much: the trainer decodes a group per row


def quarantine_reason(text) -> str:
    if text is None:
        return NULL_TEXT
    if not isinstance(text, str):
        return NOT_STRING
    if not text.strip():
        return EMPTY_TEXT
    return ""


# --- the record: what the shards were made from ----------------------------------------------------
def file_identity(path: str) -> list:
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


def input_key(mix: MixtureConfig, files: dict[str, list[str]]) -> str:
    """The mixture and its input files' identity (path, size, modification time): the same key
    means the same shards, so the work can be skipped. New curated data under the same relative
    paths changes the key."""
    stats = {name: [file_identity(f) for f in fs] for name, fs in files.items()}
    # the tokenizer by content, not only by folder: a model re-imported under the same path
    # with another vocabulary makes other shards
    return config_hash({"mixture": mix, "files": stats, "tokenizer": tokenizer_for(mix.tokenizer).identity})


def read_record(out: Path, key: str) -> dict | None:
    """The record of RUN/<out> when its shards were made from `key`, else None."""
    p = out / RECORD
    if not p.exists():
        return None
    record = json.loads(p.read_text())
    return record if record.get("key") == key else None


# --- pass 1: one input file -> document token ids ------------------------------------------------
def docs_file(cache: Path, path: str) -> Path:
    """Where `path`'s token ids go: named by its identity, so a changed file is tokenized again."""
    return Path(cache) / (hashlib.sha1(json.dumps(file_identity(path)).encode()).hexdigest()[:20] + ".parquet")


DOCS_SCHEMA = pa.schema([("tokens", pa.list_(pa.int32())), ("n", pa.int32())])


def encode_batch(tok, texts: list) -> tuple[list[list[int]], list[str]]:
    """(token ids of the kept documents, quarantine reason per text). Documents are encoded with
    `encode_ordinary`: special-token text in a document stays text."""
    reasons = [quarantine_reason(t) for t in texts]
    kept = [t for t, r in zip(texts, reasons) if not r]
    return tok.encode_batch(kept, ordinary=True, num_threads=1), reasons


def tokenize_file(path: str, cache: Path, tok) -> dict:
    """Tokenize one Parquet file's `text` column into `docs_file(cache, path)` (written atomically;
    an existing one is reused) and return its summary {"read", "quarantined": {reason: n}}."""
    dest = docs_file(cache, path)
    meta = dest.with_suffix(".json")
    if dest.is_file() and meta.is_file():
        return json.loads(meta.read_text())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    read, reasons = 0, Counter()
    with pq.ParquetWriter(tmp, DOCS_SCHEMA) as writer:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS, columns=["text"]):
            docs, why = encode_batch(tok, batch.column("text").to_pylist())
            read += batch.num_rows
            reasons.update(r for r in why if r)
            if docs:
                writer.write_table(pa.table({"tokens": pa.array(docs, pa.list_(pa.int32())),
                                             "n": pa.array([len(d) for d in docs], pa.int32())}, schema=DOCS_SCHEMA))
    summary = {"read": read, "quarantined": dict(sorted(reasons.items()))}
    tmp.replace(dest)
    meta.write_text(json.dumps(summary))
    return summary


def doc_lengths(docs: Path) -> Iterator[np.ndarray]:
    """Token counts of a docs file's documents, a record batch at a time."""
    for batch in pq.ParquetFile(docs).iter_batches(batch_size=READ_ROWS, columns=["n"]):
        yield batch.column("n").to_numpy(zero_copy_only=False)


def source_stats(docs: Path, source: Source) -> dict:
    """What one docs file gives `source`: documents kept (>= min_tokens) and too short, the longest,
    up-weighted documents, and the tokens one pass takes (eot included, up-weighted counted
    `upweight` times)."""
    kept = short = longest = upweighted = 0
    available = 0.0
    for n in doc_lengths(docs):
        ok = n >= source.min_tokens
        kept += int(ok.sum())
        short += int((~ok).sum())
        longest = max(longest, int(n.max()) if len(n) else 0)
        w = source.doc_weights(n[ok])
        available += float((n[ok] + 1).sum() if w is None else (w * (n[ok] + 1)).sum())
        upweighted += 0 if w is None else int((w > 1).sum())
    return {"kept": kept, "short": short, "longest": longest, "upweighted": upweighted, "available": available}


# --- the plan's groups -----------------------------------------------------------------------------
def pack_groups(files: list[str], available: list[float], epochs: float, target_tokens: int) -> list[list[int]]:
    """Consecutive files of one source, cut where the tokens they contribute (available x epochs)
    reach `target_tokens`: each group is one packing task and drops at most one partial row."""
    groups, current, acc = [], [], 0.0
    for i, a in enumerate(available):
        current.append(i)
        acc += a * epochs
        if acc >= target_tokens:
            groups.append(current)
            current, acc = [], 0.0
    if current:
        groups.append(current)
    return groups


# --- pass 2: sample and pack one group -------------------------------------------------------------
class DocCopies:
    """How many copies of each document, in order, a source's plan takes (systematic sampling):
    document d expects x_d = epochs x weight_d copies and gets floor or ceil of it, so the running
    total never strays from the expected one by more than 1. The phase (from the seed) picks which
    documents round up. A stream, O(1) memory: restart it for another pass over the same documents."""

    def __init__(self, epochs: float, phase: float):
        self.epochs, self.phase, self.acc = epochs, phase, 0.0

    def take(self, weights: np.ndarray) -> np.ndarray:
        ends = self.acc + np.cumsum(weights * self.epochs)
        starts = np.concatenate([[self.acc], ends[:-1]])
        self.acc = float(ends[-1]) if len(ends) else self.acc
        return (np.floor(ends + self.phase) - np.floor(starts + self.phase)).astype(np.int64)


def group_phase(seed: int, source: str, group: int) -> float:
    return zlib.crc32(f"{seed}\0{source}\0{group}".encode()) / 2**32


def _group_docs(docs_files: list[Path], source: Source, epochs: float, phase: float) -> Iterator[np.ndarray]:
    """The documents a group takes, pass by pass: pass k takes every document with more than k
    copies, in file order (a document's copies land in different passes, so never side by side)."""
    k, more = 0, True
    while more:
        copies, more = DocCopies(epochs, phase), False
        for f in docs_files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=READ_ROWS, columns=["tokens", "n"]):
                n = batch.column("n").to_numpy(zero_copy_only=False)
                ok = n >= source.min_tokens
                w = source.doc_weights(n)
                c = copies.take(np.where(ok, 1.0 if w is None else w, 0.0))
                more |= bool((c > k + 1).any())
                col = batch.column("tokens")
                for i in np.nonzero(c > k)[0]:
                    yield col[int(i)].values.to_numpy(zero_copy_only=False)
        k += 1


def shard_name(source_index: int, group: int, part: int) -> str:
    return f"shard-{source_index:02d}-{group:05d}-{part:04d}.parquet"


def _write_shard(path: Path, rows: list[dict], source: str, width: int) -> None:
    tokens = np.stack([r["tokens"] for r in rows])
    doc_ids = np.stack([r["doc_ids"] for r in rows])
    offsets = pa.array(np.arange(0, tokens.size + 1, width, dtype=np.int32))
    table = pa.table({"tokens": pa.ListArray.from_arrays(offsets, pa.array(tokens.reshape(-1), pa.int32())),
                      "doc_ids": pa.ListArray.from_arrays(offsets, pa.array(doc_ids.reshape(-1), pa.int32())),
                      "source": pa.array([source] * len(rows), pa.string())})
    pq.write_table(table, path, row_group_size=max(1, ROW_BYTES // (8 * width)))


def pack_group(task: dict, mix: MixtureConfig, out: Path) -> dict:
    """Sample and pack one group (`task`: source index, group index, docs files, epochs) into
    shards in `out`; returns its counts and shard names."""
    source = mix.sources[task["source_index"]]
    width = mix.seq_len + 1
    stats = PackStats()
    phase = group_phase(mix.seed, source.name, task["group"])
    docs = _group_docs([Path(f) for f in task["docs"]], source, task["epochs"], phase)
    names, rows = [], []

    def flush() -> None:
        names.append(shard_name(task["source_index"], task["group"], len(names)))
        _write_shard(out / names[-1], rows, source.name, width)
        rows.clear()

    for row in pack(docs, mix.seq_len, tokenizer_for(mix.tokenizer).eos_id, stats):
        rows.append(row)
        if len(rows) == mix.shard_sequences:
            flush()
    if rows:
        flush()
    return {"source": source.name, "shards": names, "docs_sampled": stats.docs, "tokens_sampled": stats.tokens_in,
            "tokens_packed": stats.tokens_packed, "tokens_dropped": stats.tokens_dropped, "sequences": stats.rows}


# --- counts ----------------------------------------------------------------------------------------
def source_counts(summaries: list[dict], stats: list[dict]) -> dict:
    """One source's documents over its files: read = kept + dropped (too short) + quarantined."""
    reasons = Counter()
    for s in summaries:
        reasons.update(s["quarantined"])
    kept, short = sum(s["kept"] for s in stats), sum(s["short"] for s in stats)
    return {"docs_read": sum(s["read"] for s in summaries), "docs_kept": kept,
            "docs_quarantined": sum(reasons.values()), "quarantined": dict(sorted(reasons.items())),
            "docs_dropped": short, "dropped": {TOO_SHORT: short} if short else {}}


def check_source(source: Source, stats: list[dict]) -> None:
    """A source with `min_tokens` that keeps no document fails, naming the threshold and the longest."""
    kept = sum(s["kept"] for s in stats)
    total = kept + sum(s["short"] for s in stats)
    if total and not kept:
        raise ValueError(
            f"tokenize: source {source.name!r} keeps no document of >= min_tokens={source.min_tokens} tokens "
            f"({total} documents, the longest {max(s['longest'] for s in stats)} tokens); add longer documents "
            f"or lower the threshold (midtraining: a smaller seq_len / pretrain_seq_len)")


def mixture_counts(mix: MixtureConfig, counts: dict, plan: dict, available: dict, groups: int, shards: int) -> dict:
    total_packed = sum(c["tokens_packed"] for c in counts.values())
    if not total_packed:
        raise ValueError(f"tokenize: no sequence of seq_len+1={mix.seq_len + 1} tokens could be packed "
                         f"(tokens available per source: {available}); lower mixture.seq_len or add data")
    return {
        "sequences": sum(c["sequences"] for c in counts.values()), "shards": shards, "pack_groups": groups,
        "seq_len": mix.seq_len, "row_width": mix.seq_len + 1, "tokens_packed": total_packed,
        "tokens_dropped": sum(c["tokens_dropped"] for c in counts.values()),
        "docs_quarantined": sum(c["docs_quarantined"] for c in counts.values()),
        "docs_dropped": sum(c["docs_dropped"] for c in counts.values()),
        "shares_target": {n: round(w, 6) for n, w in mix.weights().items()},
        "shares_planned": {n: round(v, 6) for n, v in plan_shares(plan, available).items()},
        "shares_achieved": {s.name: round(counts[s.name]["tokens_packed"] / total_packed, 6) for s in mix.sources},
        "sources": counts,
    }


# --- the output folder -----------------------------------------------------------------------------
def start_output(out: Path) -> Path:
    """The folder shards are written to, beside `out`, swapped in whole by `finish_output`."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # a crashed attempt's partial folder: nothing else reads it
    tmp.mkdir(parents=True)
    return tmp


def finish_output(tmp: Path, out: Path, record: dict) -> dict:
    """Write the record (with `finished_at`), swap `tmp` in as `out`; returns the record as read back."""
    record = {**record, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (tmp / RECORD).write_text(json.dumps(record, indent=2))
    shutil.rmtree(out, ignore_errors=True)  # the shards of another mixture: rebuilt from their inputs
    tmp.rename(out)
    return json.loads((out / RECORD).read_text())


def group_target(mix: MixtureConfig) -> int:
    """Tokens per pack group: a few shards' worth, so the partial row each group drops is under
    1/(4 x shard_sequences) of what it packs, while a source still splits over many tasks."""
    return 4 * mix.shard_sequences * (mix.seq_len + 1)
