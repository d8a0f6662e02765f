"""From tokenized documents to a run's token shards: quarantine reasons, the mixture's sampling and
packing per source, the seeded row shuffle, the shard files, and the record that lets an unchanged
mixture skip the work.

Sampling, packing and the row shuffle run in one process over the materialised token ids. They
are sequential by nature (a row continues where the previous one stopped) and cost one memcpy per
token, which is nothing next to tokenizing at the tiny/small scale; a seeded permutation in one
process is reproducible on any cluster size, where Ray's block layout (and so `random_shuffle`)
depends on the cluster. At the report's 10T-token scale this would become the bottleneck: there
one would pack per (source, input file) inside the tokenizing pipeline over large batches
(dropping at most one partial row per batch) and sample by per-document hashes instead of
permutations.

Packing is per source, so every row has exactly one `source` and per-source token counts are
exact. Mixing happens at row level: rows of all sources are shuffled together (seeded) before
sharding, so every stretch of shards follows the mixture. Packing documents of different sources
into one row would gain nothing (attention stays inside a document anyway).

Shards are written with pyarrow, one write per fixed name, into a folder beside the output that
is swapped in whole: reruns are byte-comparable, and a crash never leaves half a folder.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from phi4ray.manifest import config_hash
from phi4ray.packing import MixtureConfig, PackStats, mixture_plan, pack, plan_shares, sample_documents, source_seed
from phi4ray.tokenizer import ENDOFTEXT

# why a row is quarantined ("" = kept)
NULL_TEXT, NOT_STRING, EMPTY_TEXT = "null text", "non-string text", "empty text"
# why a well-formed document is left out of a source (`Source.min_tokens`)
TOO_SHORT = "shorter than min_tokens"
RECORD = "tokenize_record.json"  # in the output folder, written with the shards


def quarantine_reason(text) -> str:
    if text is None:
        return NULL_TEXT
    if not isinstance(text, str):
        return NOT_STRING
    if not text.strip():
        return EMPTY_TEXT
    return ""


# --- the record: what the shards were made from ----------------------------------------------------
def input_key(mix: MixtureConfig, files: dict[str, list[str]]) -> str:
    """The mixture and its input files' identity (path, size, modification time): the same key
    means the same shards, so the work can be skipped. New curated data under the same relative
    paths changes the key."""
    stats = {name: [[f, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in fs] for name, fs in files.items()}
    return config_hash({"mixture": mix, "files": stats})


def read_record(out: Path, key: str) -> dict | None:
    """The record of RUN/<out> when its shards were made from `key`, else None."""
    p = out / RECORD
    if not p.exists():
        return None
    record = json.loads(p.read_text())
    return record if record.get("key") == key else None


# --- documents -> rows -----------------------------------------------------------------------------
def source_counts(read: int, reasons: Counter, kept: int, short: int) -> dict:
    return {"docs_read": read, "docs_kept": kept, "docs_quarantined": sum(reasons.values()),
            "quarantined": dict(sorted(reasons.items())), "docs_dropped": short,
            "dropped": {TOO_SHORT: short} if short else {}}


def pack_mixture(mix: MixtureConfig, tokenized: dict[str, tuple[list[np.ndarray], Counter, int]]):
    """Sample and pack each source's documents to the mixture, then shuffle the rows together.

    `tokenized[source] = (kept token arrays in file order, quarantine reasons, rows read)`.
    Returns (tokens, doc_ids, sources, plan, available, per-source counts). A source with
    `min_tokens` that keeps no document fails, naming the threshold and the longest document."""
    docs, counts = {}, {}
    for s in mix.sources:
        kept, reasons, read = tokenized[s.name]
        docs[s.name] = [d for d in kept if len(d) >= s.min_tokens]
        short = len(kept) - len(docs[s.name])
        if kept and not docs[s.name]:
            raise ValueError(
                f"tokenize: source {s.name!r} keeps no document of >= min_tokens={s.min_tokens} tokens "
                f"({len(kept)} documents, the longest {max(map(len, kept))} tokens); add longer documents "
                f"or lower the threshold (midtraining: a smaller seq_len / pretrain_seq_len)")
        counts[s.name] = source_counts(read, reasons, len(docs[s.name]), short)

    # tokens one pass over a source offers, counting the eot each document gets when packed and
    # each up-weighted document `upweight` times
    lengths = {n: np.array([len(d) + 1 for d in ds], dtype=np.int64) for n, ds in docs.items()}
    weights = {s.name: s.doc_weights(lengths[s.name] - 1) for s in mix.sources}
    available = {n: int(round(ls.sum() if weights[n] is None else (weights[n] * ls).sum()))
                 for n, ls in lengths.items()}
    plan = mixture_plan(available, mix, mix.total_tokens)
    packed_tokens, packed_doc_ids, packed_source = [], [], []
    for s in mix.sources:
        order = sample_documents(lengths[s.name], plan[s.name], source_seed(mix.seed, s.name), weights[s.name])
        stats = PackStats()
        rows = list(pack((docs[s.name][i] for i in order), mix.seq_len, ENDOFTEXT, stats))
        packed_tokens += [r["tokens"] for r in rows]
        packed_doc_ids += [r["doc_ids"] for r in rows]
        packed_source += [s.name] * len(rows)
        counts[s.name].update({
            "tokens_available": available[s.name], "epochs_planned": round(plan[s.name], 6),
            "docs_upweighted": 0 if weights[s.name] is None else int((weights[s.name] > 1).sum()),
            "docs_sampled": stats.docs, "tokens_sampled": stats.tokens_in, "tokens_packed": stats.tokens_packed,
            "tokens_dropped": stats.tokens_dropped, "sequences": stats.rows})
    if not packed_tokens:
        raise ValueError(f"tokenize: no sequence of seq_len+1={mix.seq_len + 1} tokens could be packed "
                         f"(tokens available per source: {available}); lower mixture.seq_len or add data")
    perm = np.random.default_rng(source_seed(mix.seed, "<row shuffle>")).permutation(len(packed_tokens))
    tokens = np.stack(packed_tokens)[perm]
    doc_ids = np.stack(packed_doc_ids)[perm]
    sources = np.array(packed_source, dtype=object)[perm]
    return tokens, doc_ids, sources, plan, available, counts


def mixture_counts(mix: MixtureConfig, tokens: np.ndarray, shards: int, plan: dict, available: dict,
                   counts: dict) -> dict:
    total_packed = int(tokens.size)
    return {
        "sequences": len(tokens), "shards": shards, "seq_len": mix.seq_len, "row_width": mix.seq_len + 1,
        "tokens_packed": total_packed,
        "tokens_dropped": sum(c["tokens_dropped"] for c in counts.values()),
        "docs_quarantined": sum(c["docs_quarantined"] for c in counts.values()),
        "docs_dropped": sum(c["docs_dropped"] for c in counts.values()),
        "shares_target": {n: round(w, 6) for n, w in mix.weights().items()},
        "shares_planned": {n: round(v, 6) for n, v in plan_shares(plan, available).items()},
        "shares_achieved": {s.name: round(counts[s.name]["tokens_packed"] / total_packed, 6) for s in mix.sources},
        "sources": counts,
    }


# --- writing ---------------------------------------------------------------------------------------
def _lists(a: np.ndarray):
    offsets = np.arange(0, a.size + 1, a.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(a.reshape(-1), pa.int32()))


def shard_names(rows: int, rows_per_shard: int) -> list[str]:
    return [f"shard-{i:05d}.parquet" for i in range(-(-rows // rows_per_shard))]


def write_shards(out: Path, tokens: np.ndarray, doc_ids: np.ndarray, sources: np.ndarray,
                 rows_per_shard: int, record: dict) -> dict:
    """RUN/<out>/shard-NNNNN.parquet (tokens list<int32>, doc_ids list<int32>, source string) and
    the record (with `finished_at` added), swapped in whole; returns the record."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # a crashed attempt's partial folder: nothing else reads it
    tmp.mkdir(parents=True)
    for i, name in enumerate(shard_names(len(tokens), rows_per_shard)):
        sl = slice(i * rows_per_shard, (i + 1) * rows_per_shard)
        table = pa.table({"tokens": _lists(tokens[sl]), "doc_ids": _lists(doc_ids[sl]),
                          "source": pa.array(sources[sl].tolist(), pa.string())})
        pq.write_table(table, tmp / name)
    record = {**record, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (tmp / RECORD).write_text(json.dumps(record, indent=2))
    shutil.rmtree(out, ignore_errors=True)  # the shards of another mixture: rebuilt from their inputs
    tmp.rename(out)
    return json.loads((out / RECORD).read_text())  # as a reuse reads it back
