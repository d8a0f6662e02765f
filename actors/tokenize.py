"""Stage `tokenize`: the weighted source mixture, tokenized on Ray Data and packed into token shards.

    RUN/<source paths> --read_parquet--> TokenizeBatch actors (map_batches) --> driver:
    mixture plan -> seeded document sampling -> packing per source -> seeded row shuffle
    --> RUN/tokens/shard-NNNNN.parquet (tokens list<int32>, doc_ids list<int32>, source string)

The mixture (phi4ray.mixtures) is the run's curated and synthetic data, or the built-in corpus
while the run has none. Midtraining tokenizes its own mixture (long + recall) the same way into
RUN/tokens_midtrain (`tokenize_mixture`).

Reading and tokenizing (the CPU-heavy part) run on Ray Data: `read_parquet` over each source's
files and a pool of `TokenizeBatch` actors, each loading the tokenizer once. Rows whose `text` is
null, not a string or blank are kept in the stream with a reason and counted as quarantined,
never a crash. `preserve_order` makes the document order the files' order, so a seed gives the
same result however many actors ran. Sampling, packing, the row shuffle and writing run in the
driver (phi4ray.token_shards says why). The shards are not written with Ray's `write_parquet`:
the rows are already in the driver, and Ray's writer would ship them through the object store to
a task whose threaded writer does not promise row order.
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from phi4ray.mixtures import pretrain_mixture, source_files
from phi4ray.packing import MixtureConfig
from phi4ray.stage import Stage, StageResult
from phi4ray.token_shards import (
    input_key,
    mixture_counts,
    pack_mixture,
    quarantine_reason,
    read_record,
    shard_names,
    write_shards,
)
from phi4ray.tokenizer import get_tokenizer


class TokenizeBatch:
    """`map_batches` actor: text -> tokens list<int32> + quarantine string ("" = kept) per document.

    Documents are encoded with `encode_ordinary`: special-token text in a document stays text.
    """

    def __init__(self) -> None:
        self.tok = get_tokenizer()

    def __call__(self, batch):
        texts = batch.column("text").to_pylist()
        reasons = [quarantine_reason(t) for t in texts]
        kept = [t for t, r in zip(texts, reasons) if not r]
        encoded = iter(self.tok.encode_batch(kept, ordinary=True, num_threads=1))
        docs = [next(encoded) if not r else [] for r in reasons]
        offsets = np.zeros(len(docs) + 1, dtype=np.int32)
        np.cumsum([len(d) for d in docs], out=offsets[1:])
        values = np.concatenate([np.asarray(d, dtype=np.int32) for d in docs] or [np.zeros(0, np.int32)])
        tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32()))
        rest = batch.drop_columns(["text"])  # other columns (the source label) pass through
        return rest.append_column("tokens", tokens).append_column("quarantine", pa.array(reasons, pa.string()))


def _label(batch, source: str):
    return batch.append_column("source", pa.array([source] * batch.num_rows, pa.string()))


def _tokenize_sources(files: dict[str, list[str]], actors: int) -> dict[str, tuple[list[np.ndarray], Counter, int]]:
    """Each source's documents in file order: {name: (kept token arrays, quarantine reasons, rows read)}.

    One pipeline for all sources (a union of labelled reads), so the tokenizer actors start once.
    """
    import ray.data  # deferred: the record check and the library imports of this module need no Ray

    reads = [ray.data.read_parquet(fs, columns=["text"]).map_batches(
        _label, batch_format="pyarrow", fn_kwargs={"source": name}) for name, fs in files.items()]
    ds = reads[0].union(*reads[1:]) if len(reads) > 1 else reads[0]
    ds = ds.map_batches(TokenizeBatch, batch_format="pyarrow", batch_size=256,
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors))
    out = {name: ([], Counter(), 0) for name in files}
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for name in pc.unique(batch.column("source")).to_pylist():
            part = batch.filter(pc.equal(batch.column("source"), name))
            docs, reasons, read = out[name]
            reasons.update(r for r in part.column("quarantine").to_pylist() if r)
            kept = part.filter(pc.equal(part.column("quarantine"), ""))
            col = kept.column("tokens").combine_chunks()
            values = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int32)
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            docs += np.split(values, np.cumsum(lengths)[:-1]) if len(lengths) else []
            out[name] = (docs, reasons, read + part.num_rows)
    return out


def _result(record: dict) -> StageResult:
    return StageResult(counts=record["counts"], outputs=record["outputs"], inputs=record["inputs"],
                       timings=record["timings"])


def tokenize_mixture(run_dir: str | Path, mix: MixtureConfig, cluster, *, out_name: str = "tokens",
                     actors: int | None = None) -> StageResult:
    """Tokenize, sample, pack and shard `mix` into RUN/<out_name> on `cluster` (a RayCluster).

    The output folder's record (phi4ray.token_shards) makes a rerun over the same mixture and the
    same input files a no-op that returns the first result. `actors` caps the tokenizer actor pool
    (default: one per CPU Ray Data may use, less one); it does not change the output. Sources
    reading the same files are tokenized once. A source with `min_tokens` that keeps no document
    fails, naming the threshold and the longest document it saw."""
    import ray.data  # deferred: a reused record needs no Ray

    run_dir = Path(run_dir)
    out = run_dir / out_name
    t0 = time.time()
    files = {s.name: source_files(run_dir, s) for s in mix.sources}  # fail on bad inputs first
    key = input_key(mix, files)
    done = read_record(out, key)
    if done is not None:
        return _result(done)
    first_with = {}  # one tokenization per distinct list of files
    for name, fs in files.items():
        first_with.setdefault(tuple(fs), name)
    with cluster.session():
        ctx = ray.data.DataContext.get_current()
        old_order = ctx.execution_options.preserve_order
        ctx.execution_options.preserve_order = True  # document order = file order: seeds reproduce
        try:
            if actors is None:
                actors = max(1, cluster.data_cpus() - 1)
            distinct = _tokenize_sources({name: list(fs) for fs, name in first_with.items()}, actors)
            tokenized = {name: distinct[first_with[tuple(fs)]] for name, fs in files.items()}
        finally:
            ctx.execution_options.preserve_order = old_order
    t_tok = time.time() - t0
    tokens, doc_ids, sources, plan, available, counts = pack_mixture(mix, tokenized)
    t_pack = time.time() - t0 - t_tok
    shards = shard_names(len(tokens), mix.shard_sequences)
    record = {"key": key, "inputs": {"mixture": dataclasses.asdict(mix), "files": files},
              "outputs": {out_name: str(out), "shards": shards},
              "counts": mixture_counts(mix, tokens, len(shards), plan, available, counts),
              "timings": {"tokenize_s": round(t_tok, 2), "pack_s": round(t_pack, 2)}}
    record = write_shards(out, tokens, doc_ids, sources, mix.shard_sequences, record)
    return _result(record)


def run(ctx) -> StageResult:
    return tokenize_mixture(ctx.run_dir, pretrain_mixture(ctx.run_dir, ctx.cfg), ctx.cluster)


STAGE = Stage(
    name="tokenize",
    summary="tokenize and pack the weighted source mixture into token shards (Ray Data)",
    run=run,
    sections=("data", "seed"),
    uses=("curate", "synthesize"),  # the built-in corpus when neither is complete
    outputs=("tokens",),
    headline=("sequences", "tokens_packed"),
)
