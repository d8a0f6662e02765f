"""Stage `tokenize`: the weighted source mixture, tokenized on Ray Data and packed into token shards.

    RUN/<source paths> --read_parquet--> TokenizeBatch actors (map_batches) --> driver:
    mixture plan -> seeded document sampling -> packing per source -> seeded row shuffle
    --> RUN/tokens/shard-NNNNN.parquet (tokens list<int32>, doc_ids list<int32>, source string)
    + RUN/manifests/tokenize.json

Midtraining (`midtrain_mixture_for_run`) runs the same stage into RUN/tokens_midtrain with manifest
`tokenize_midtrain`: rows of the longer context, a `long` source (documents past a length filter,
the longest up-weighted) and a `recall` source (the pretraining data).

Where the work happens, and why:
- Reading and tokenizing (the CPU-heavy part) run on Ray Data: `read_parquet` over each source's
  files and a pool of `TokenizeBatch` actors, each loading the tokenizer once. Rows whose `text` is
  null, not a string or blank are kept in the stream with a reason and counted as quarantined,
  never a crash. `preserve_order` makes the document order the files' order, so a seed gives the
  same result however many actors ran.
- Sampling, packing and the row shuffle run in the driver over the materialised token ids. They
  are sequential by nature (a row continues where the previous one stopped) and cost one memcpy per
  token, which is nothing next to tokenizing at the tiny/small scale; a seeded permutation in one
  process is reproducible on any cluster size, where Ray's block layout (and so `random_shuffle`)
  depends on the cluster. At the report's 10T-token scale the driver would become the bottleneck:
  there one would pack per (source, input file) inside `map_batches` over large batches (dropping
  at most one partial row per batch) and sample by per-document hashes instead of permutations.
- Shards are written by the driver with pyarrow, not `write_parquet`: the rows are already in the
  driver, and Ray's writer would ship them through the object store to a task that writes with
  pyarrow's threaded `write_dataset`, which does not promise row order. Fixed names + one write per
  shard keep reruns byte-comparable; the folder is written aside and swapped in whole.
- Packing is per source, so every row has exactly one `source` and per-source token counts are
  exact. Mixing happens at row level: rows of all sources are shuffled together (seeded) before
  sharding, so every stretch of shards follows the mixture. Packing documents of different
  sources into one row would gain nothing (attention stays inside a document anyway).
"""
from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from actors.ray_session import data_cpus, ray_session
from phi4ray import manifest
from phi4ray.config import ConfigError
from phi4ray.packing import (PHI4_MIXTURE, MixtureConfig, PackStats, Source, mixture_plan, pack, plan_shares,
                             sample_documents, source_seed)
from phi4ray.tokenizer import ENDOFTEXT

STAGE = "tokenize"
# why a row is quarantined ("" = kept)
NULL_TEXT, NOT_STRING, EMPTY_TEXT = "null text", "non-string text", "empty text"
# why a well-formed document is left out of a source (`Source.min_tokens`)
TOO_SHORT = "shorter than min_tokens"


def quarantine_reason(text) -> str:
    if text is None:
        return NULL_TEXT
    if not isinstance(text, str):
        return NOT_STRING
    if not text.strip():
        return EMPTY_TEXT
    return ""


class TokenizeBatch:
    """`map_batches` actor: text -> tokens list<int32> + quarantine string ("" = kept) per document.

    Documents are encoded with `encode_ordinary`: special-token text in a document stays text.
    """

    def __init__(self) -> None:
        from phi4ray.tokenizer import get_tokenizer

        self.tok = get_tokenizer()

    def __call__(self, batch):
        import pyarrow as pa

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


# --- inputs ------------------------------------------------------------------------------------
def source_files(run_dir: str | Path, source: Source) -> list[str]:
    """The Parquet files of a source, sorted; relative paths resolve against the run dir. Fails
    before any work, naming the source, on a missing path or a file without a `text` column."""
    import pyarrow.parquet as pq

    files: list[Path] = []
    for p in source.paths:
        path = Path(p) if Path(p).is_absolute() else Path(run_dir) / p
        if path.is_dir():
            found = sorted(f for f in path.rglob("*.parquet") if f.is_file())
            if not found:
                raise FileNotFoundError(f"source {source.name!r}: no .parquet files under {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"source {source.name!r}: path {path} does not exist")
    for f in files:
        if "text" not in pq.read_schema(f).names:
            raise ValueError(f"source {source.name!r}: {f} has no 'text' column")
    return [str(f.resolve()) for f in files]


def _label(batch, source: str):
    import pyarrow as pa

    return batch.append_column("source", pa.array([source] * batch.num_rows, pa.string()))


def _tokenize_sources(files: dict[str, list[str]], actors: int) -> dict[str, tuple[list[np.ndarray], Counter, int]]:
    """Each source's documents in file order: {name: (kept token arrays, quarantine reasons, rows read)}.

    One pipeline for all sources (a union of labelled reads), so the tokenizer actors start once.
    """
    import pyarrow.compute as pc
    import ray.data

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


# --- outputs -----------------------------------------------------------------------------------
def _write_shards(out: Path, tokens: np.ndarray, doc_ids: np.ndarray, sources: np.ndarray,
                  rows_per_shard: int) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def lists(a: np.ndarray):
        offsets = np.arange(0, a.size + 1, a.shape[1], dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(a.reshape(-1), pa.int32()))

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = []
    for i, start in enumerate(range(0, len(tokens), rows_per_shard)):
        sl = slice(start, start + rows_per_shard)
        table = pa.table({"tokens": lists(tokens[sl]), "doc_ids": lists(doc_ids[sl]),
                          "source": pa.array(sources[sl].tolist(), pa.string())})
        names.append(f"shard-{i:05d}.parquet")
        pq.write_table(table, tmp / names[-1])
    shutil.rmtree(out, ignore_errors=True)  # a stale folder from another config
    tmp.rename(out)
    return names


def run_tokenize(run_dir: str | Path, mix: MixtureConfig, *, out_name: str = "tokens",
                 manifest_stage: str = STAGE, actors: int | None = None) -> dict:
    """Tokenize, sample, pack and shard `mix` into RUN/<out_name>; returns the manifest, written as
    RUN/manifests/<manifest_stage>.json (midtraining: "tokens_midtrain", "tokenize_midtrain").

    A run whose manifest matches `mix` is a no-op. `actors` caps the tokenizer actor pool
    (default: one per CPU of the Ray cluster less one); it does not change the output. Sources
    reading the same files are tokenized once. A source with `min_tokens` that keeps no document
    fails the stage, naming the threshold and the longest document it saw.
    """
    if manifest.is_complete(run_dir, manifest_stage, mix):
        return manifest.read_manifest(run_dir, manifest_stage)
    run_dir = Path(run_dir)
    t0 = time.time()
    files = {s.name: source_files(run_dir, s) for s in mix.sources}  # fail on bad inputs first
    first_with = {}  # one tokenization per distinct list of files
    for name, fs in files.items():
        first_with.setdefault(tuple(fs), name)

    import ray
    import ray.data

    with ray_session():
        ctx = ray.data.DataContext.get_current()
        old_order = ctx.execution_options.preserve_order
        ctx.execution_options.preserve_order = True  # document order = file order: seeds reproduce
        try:
            if actors is None:
                actors = max(1, data_cpus() - 1)
            distinct = _tokenize_sources({name: list(fs) for fs, name in first_with.items()}, actors)
            tokenized = {name: distinct[first_with[tuple(fs)]] for name, fs in files.items()}
        finally:
            ctx.execution_options.preserve_order = old_order
    t_tok = time.time() - t0
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
        counts[s.name] = {"docs_read": read, "docs_kept": len(docs[s.name]), "docs_quarantined": sum(reasons.values()),
                          "quarantined": dict(sorted(reasons.items())), "docs_dropped": short,
                          "dropped": {TOO_SHORT: short} if short else {}}

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
    width = mix.seq_len + 1
    perm = np.random.default_rng(source_seed(mix.seed, "<row shuffle>")).permutation(len(packed_tokens))
    tokens = np.stack(packed_tokens)[perm]
    doc_ids = np.stack(packed_doc_ids)[perm]
    sources = np.array(packed_source, dtype=object)[perm]
    t_pack = time.time() - t0 - t_tok

    out = run_dir / out_name
    shards = _write_shards(out, tokens, doc_ids, sources, mix.shard_sequences)
    total_packed = int(tokens.size)
    manifest.write_manifest(
        run_dir, manifest_stage, mix,
        inputs={"files": files},
        outputs={out_name: str(out), "shards": shards},
        counts={
            "sequences": len(tokens), "shards": len(shards), "seq_len": mix.seq_len, "row_width": width,
            "tokens_packed": total_packed,
            "tokens_dropped": sum(c["tokens_dropped"] for c in counts.values()),
            "docs_quarantined": sum(c["docs_quarantined"] for c in counts.values()),
            "docs_dropped": sum(c["docs_dropped"] for c in counts.values()),
            "shares_target": {n: round(w, 6) for n, w in mix.weights().items()},
            "shares_planned": {n: round(v, 6) for n, v in plan_shares(plan, available).items()},
            "shares_achieved": {s.name: round(counts[s.name]["tokens_packed"] / total_packed, 6)
                                for s in mix.sources},
            "sources": counts,
        },
        timings={"tokenize_s": round(t_tok, 2), "pack_s": round(t_pack, 2),
                 "write_s": round(time.time() - t0 - t_tok - t_pack, 2), "total_s": round(time.time() - t0, 2)},
    )
    return manifest.read_manifest(run_dir, manifest_stage)


# --- the stage as the pipeline runs it ---------------------------------------------------------
def mixture_for_run(run_dir: str | Path, *, seq_len: int, seed: int = 0, shard_sequences: int = 256,
                    total_tokens: int = 0, builtin_max_docs: int = 200) -> MixtureConfig:
    """The Phi-4 mixture over what the run has: each source of `PHI4_MIXTURE` is read from
    RUN/curated/<name> and/or RUN/synthetic/<name> where those hold Parquet files, at the report's
    weight. A run with none of them (the tiny preset before curation exists) gets the built-in
    corpus (`phi4ray.corpus`) written to RUN/builtin/<builtin_max_docs>: `code` and `web` at their
    report weights (the size is in the path: another size is another config, not a no-op).
    Paths stay relative to the run dir, so a moved run dir keeps its config hash."""
    run_dir = Path(run_dir)
    sources = []
    for name, weight in PHI4_MIXTURE.items():
        paths = tuple(f"{stage}/{name}" for stage in ("curated", "synthetic")
                      if any((run_dir / stage / name).rglob("*.parquet")))
        if paths:
            sources.append(Source(name, paths, weight))
    if not sources:
        from phi4ray.corpus import write_builtin_corpus

        folder = f"builtin/{builtin_max_docs}"
        written = write_builtin_corpus(run_dir / folder, builtin_max_docs)
        sources = [Source(name, (f"{folder}/{name}",), PHI4_MIXTURE[name]) for name in sorted(written)]
    return MixtureConfig(tuple(sources), seq_len=seq_len, seed=seed, shard_sequences=shard_sequences,
                         total_tokens=total_tokens)


def midtrain_mixture_for_run(run_dir: str | Path, *, seq_len: int, pretrain_seq_len: int, seed: int = 0,
                             long_share: float = 0.3, shard_sequences: int = 256, total_tokens: int = 0,
                             builtin_max_docs: int = 200) -> MixtureConfig:
    """The long-context midtraining mixture (Phi-4 report: 4K -> 16K context; 30% new long data
    with documents > 8K tokens kept and >= 16K up-weighted, 70% recall of pretraining data), scaled
    to pretraining context L = `pretrain_seq_len` and midtraining context `seq_len` (4L there):
    - `long` (weight `long_share`): the pretraining inputs (`mixture_for_run`'s folders), keeping
      documents of >= 2L tokens and sampling those of >= `seq_len` tokens twice as often;
    - `recall` (weight 1 - long_share): the same folders, every document; recall is in proportion
      to each folder's tokens, not to the pretraining weights.
    The report's long data is new data; a run has only its pretraining data, so long documents can
    repeat in recall. Whether any document is long is known only after tokenizing: `run_tokenize`
    fails then, naming the threshold and the longest document (pick a smaller seq_len, or a larger
    `builtin_max_docs`, whose stdlib .py files are mostly > 2 x 128 tokens)."""
    if isinstance(pretrain_seq_len, bool) or not isinstance(pretrain_seq_len, int) or pretrain_seq_len < 1:
        raise ConfigError(f"midtrain: pretrain_seq_len={pretrain_seq_len!r} must be an integer >= 1")
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len <= pretrain_seq_len:
        raise ConfigError(f"midtrain: seq_len={seq_len!r} must be an integer > pretrain_seq_len={pretrain_seq_len}")
    if isinstance(long_share, bool) or not isinstance(long_share, (int, float)) or not 0 < long_share < 1:
        raise ConfigError(f"midtrain: long_share={long_share!r} must be a number in (0, 1)")
    pretrain = mixture_for_run(run_dir, seq_len=pretrain_seq_len, seed=seed, builtin_max_docs=builtin_max_docs)
    paths = tuple(p for s in pretrain.sources for p in s.paths)
    sources = (Source("long", paths, long_share, min_tokens=2 * pretrain_seq_len,
                      upweight_min_tokens=seq_len, upweight=2.0),
               Source("recall", paths, 1 - long_share))
    return MixtureConfig(sources, seq_len=seq_len, seed=seed, shard_sequences=shard_sequences,
                         total_tokens=total_tokens)
