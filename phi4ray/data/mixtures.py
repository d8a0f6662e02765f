"""The run's token mixtures: which sources a run has, at which weights, for pretraining and for
long-context midtraining, and the Parquet files each source reads."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from phi4ray.data.corpus import write_builtin_corpus
from phi4ray.data.packing import PHI4_MIXTURE, MixtureConfig, Source
from phi4ray.run.errors import ConfigError
from phi4ray.run.paths import run_tokenizer_dir

# RUN/synthetic/<SYNTHETIC_LONG>: the synthesize stage's long-context rows (phi4ray.data.synth.long).
# Not a pretraining source (`mixture_for_run` reads the folders of PHI4_MIXTURE's names only): they
# are midtraining's new long data, which its `long` source reads beside the long pretraining documents
SYNTHETIC_LONG = "long"


def mixture_for_run(run_dir: str | Path, *, seq_len: int, seed: int = 0, shard_sequences: int = 256,
                    total_tokens: int = 0, builtin_max_docs: int = 200, tokenizer: str = "",
                    weights: dict[str, float] | None = None,
                    epochs: dict[str, float] | None = None) -> MixtureConfig:
    """The Phi-4 mixture over what the run has: each source of `PHI4_MIXTURE` is read from
    RUN/curated/<name> and/or RUN/synthetic/<name> where those hold Parquet files, at its weight
    (`weights`, else the report's) and epoch cap (`epochs`, else 1). A run with none of them (the
    tiny preset before curation exists) gets the built-in corpus (`phi4ray.data.corpus`) written to
    RUN/builtin/<builtin_max_docs>: `code` and `web` (the size is in the path: another size is
    another config, not a no-op). Paths stay relative to the run dir, so a moved run dir keeps its
    config hash."""
    run_dir = Path(run_dir)
    unknown = sorted({*(weights or {}), *(epochs or {})} - PHI4_MIXTURE.keys())
    if unknown:
        raise ConfigError(f"mixture: unknown source(s) {unknown}; the sources are {list(PHI4_MIXTURE)}")
    weights, epochs = {**PHI4_MIXTURE, **(weights or {})}, epochs or {}

    def source(name: str, paths: tuple[str, ...]) -> Source:
        return Source(name, paths, weights[name], epochs.get(name, 1.0))

    sources = []
    for name in PHI4_MIXTURE:
        paths = tuple(f"{stage}/{name}" for stage in ("curated", "synthetic")
                      if any((run_dir / stage / name).rglob("*.parquet")))
        if paths:
            sources.append(source(name, paths))
    if not sources:
        folder = f"builtin/{builtin_max_docs}"
        written = write_builtin_corpus(run_dir / folder, builtin_max_docs)
        sources = [source(name, (f"{folder}/{name}",)) for name in sorted(written)]
    return MixtureConfig(tuple(sources), seq_len=seq_len, seed=seed, shard_sequences=shard_sequences,
                         total_tokens=total_tokens, tokenizer=tokenizer)


def pretrain_mixture(run_dir: str | Path, cfg) -> MixtureConfig:
    """The tokenize stage's mixture for a RunConfig: data.weights and data.epochs per source."""
    d = cfg.data
    return mixture_for_run(run_dir, seq_len=d.seq_len, seed=cfg.seed, shard_sequences=d.shard_sequences,
                           total_tokens=d.total_tokens, builtin_max_docs=d.builtin_max_docs,
                           tokenizer=run_tokenizer_dir(run_dir), weights=d.source_weights(),
                           epochs=d.source_epochs())


def midtrain_mixture_for_run(run_dir: str | Path, *, seq_len: int, pretrain_seq_len: int, seed: int = 0,
                             long_share: float = 0.3, shard_sequences: int = 256, total_tokens: int = 0,
                             builtin_max_docs: int = 200, tokenizer: str = "") -> MixtureConfig:
    """The long-context midtraining mixture (Phi-4 report: 4K -> 16K context; 30% new long data
    with documents > 8K tokens kept and >= 16K up-weighted, 70% recall of pretraining data), scaled
    to pretraining context L = `pretrain_seq_len` and midtraining context `seq_len` (4L there):
    - `long` (weight `long_share`): the pretraining inputs (`mixture_for_run`'s folders) and the
      synthetic long rows (RUN/synthetic/long, where it holds Parquet files), keeping documents of
      >= 2L tokens and sampling those of >= `seq_len` tokens twice as often;
    - `recall` (weight 1 - long_share): the pretraining folders, every document; recall is in
      proportion to each folder's tokens, not to the pretraining weights.
    The report's long data is new data: the synthetic long rows are, the long pretraining documents
    repeat in recall. Whether any document is long is known only after tokenizing: tokenizing
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
    synthetic = f"synthetic/{SYNTHETIC_LONG}"
    long_paths = paths + ((synthetic,) if any((Path(run_dir) / synthetic).rglob("*.parquet")) else ())
    sources = (Source("long", long_paths, long_share, min_tokens=2 * pretrain_seq_len,
                      upweight_min_tokens=seq_len, upweight=2.0),
               Source("recall", paths, 1 - long_share))
    return MixtureConfig(sources, seq_len=seq_len, seed=seed, shard_sequences=shard_sequences,
                         total_tokens=total_tokens, tokenizer=tokenizer)


def midtrain_mixture(run_dir: str | Path, cfg) -> MixtureConfig:
    """The midtrain stage's mixture for a RunConfig, at data.seq_len x midtrain.context_multiplier."""
    m = cfg.midtrain
    return midtrain_mixture_for_run(run_dir, seq_len=cfg.data.seq_len * m.context_multiplier,
                                    pretrain_seq_len=cfg.data.seq_len, seed=cfg.seed, long_share=m.long_share,
                                    builtin_max_docs=cfg.data.builtin_max_docs, tokenizer=run_tokenizer_dir(run_dir))


def source_files(run_dir: str | Path, source: Source) -> list[str]:
    """The Parquet files of a source, sorted; relative paths resolve against the run dir. Fails
    before any work, naming the source, on a missing path or a file without a `text` column."""
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
