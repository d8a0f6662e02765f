"""Stage 3's library half: the weighted source mixture (the plan), greedy packing, reading shards back.

Plain Python + numpy (+ pyarrow to read shards back); phi4ray.data.token_shards samples and packs with
it, file by file, and `actors/data/tokenize.py` runs that on Ray Data.

Row layout (what `pack` yields and `RUN/tokens` holds), for a training context of `seq_len`:
- `tokens`: seq_len + 1 int32 ids, so inputs = tokens[:-1] and targets = tokens[1:]. Rows do not
  overlap: each packed token is in exactly one row, and a row's first token is never a target.
- every document is followed by `<|endoftext|>` and the documents are concatenated into one stream
  that is cut into rows; the remainder shorter than a row is dropped and counted
  (tokens_in = tokens_packed + tokens_dropped).
- `doc_ids`: int32, same length, 0 at the start of every row and +1 at every `<|endoftext|>`.
  The eot that ends document k opens document k+1's group: as a target it is predicted from
  document k's context (the model learns where documents end); as an input it is position 0 of
  document k+1, so that document is never conditioned on the previous one
  (`phi4ray.model.decoder.document_causal_mask` / `positions_from_doc_ids`). Documents come from
  `encode_ordinary`, so an eot id only ever appears as this separator.
- a document longer than the rest of a row continues at the start of the next row with doc id 0;
  its positions restart there and it cannot attend to its own earlier part (the price of
  fixed-length rows without cross-row state).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq

from phi4ray.data.row_stream import fixed_width
from phi4ray.run.errors import ConfigError

# The report's pretraining mixture (Phi-4 report, sec. 3.2): share of training tokens per source.
PHI4_MIXTURE: dict[str, float] = {
    "synthetic": 0.40, "web": 0.15, "web_rewrites": 0.15, "code": 0.20, "acquired": 0.10,
}


def _positive(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{what}={value!r} must be a finite number > 0")


def source_table(entries: str | Sequence[str], default: dict[str, float], key: str) -> dict[str, float]:
    """A per-source config table (`data.weights`, `data.epochs`) read from its `name=value` entries,
    the form a tuple takes on the command line: every source of `default`, each named one at its
    value. Fails naming `key` and the entry: an unknown name (listing the known ones), a name given
    twice, a value that is not a finite number > 0."""
    table, seen = dict(default), set()
    for entry in (entries,) if isinstance(entries, str) else entries:
        name, sep, raw = str(entry).partition("=")
        if not sep:
            raise ConfigError(f"{key}: {entry!r} is not source=value")
        if name not in default:
            raise ConfigError(f"{key}: unknown source {name!r} in {entry!r}; the sources are {list(default)}")
        if name in seen:
            raise ConfigError(f"{key}: source {name!r} is given twice")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{key}: {entry!r}: {raw!r} is not a number") from None
        _positive(value, f"{key}: {name}")
        table[name] = value
        seen.add(name)
    return table


def table_entries(table: dict[str, float]) -> tuple[str, ...]:
    """`source_table`'s inverse: one form per table, so equal tables give equal config keys."""
    return tuple(f"{name}={float(value)!r}" for name, value in table.items())


@dataclass(frozen=True)
class Source:
    """One named source: Parquet files or folders of Parquet files with a `text` column.

    `weight` is its share of the mixture (renormalised over the sources present); `epochs` caps
    how many passes over it the mixture may take. Relative paths resolve against the run dir.
    Document filters, in document tokens (the eot not counted): one with fewer than `min_tokens` is
    dropped (and counted); one with at least `upweight_min_tokens` is sampled `upweight` times as
    often (a pass over the source takes it `upweight` times; `Source.doc_weights`).
    """
    name: str
    paths: tuple[str, ...]
    weight: float
    epochs: float = 1.0
    min_tokens: int = 0
    upweight_min_tokens: int = 0
    upweight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"source.name={self.name!r} must be a non-empty string")
        paths = (self.paths,) if isinstance(self.paths, str) else tuple(self.paths)
        if not paths or not all(isinstance(p, str) and p for p in paths):
            raise ConfigError(f"source {self.name!r}: paths={self.paths!r} must be non-empty path strings")
        object.__setattr__(self, "paths", paths)
        _positive(self.weight, f"source {self.name!r}: weight")
        _positive(self.epochs, f"source {self.name!r}: epochs")
        for field in ("min_tokens", "upweight_min_tokens"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"source {self.name!r}: {field}={value!r} must be an integer >= 0")
        _positive(self.upweight, f"source {self.name!r}: upweight")
        if self.upweight < 1:
            raise ConfigError(f"source {self.name!r}: upweight={self.upweight!r} must be >= 1")

    def doc_weights(self, doc_tokens: Sequence[int] | np.ndarray) -> np.ndarray | None:
        """Sampling weight per document (`upweight` or 1) from its token count; None if all are 1."""
        if self.upweight == 1:
            return None
        return np.where(np.asarray(doc_tokens) >= self.upweight_min_tokens, float(self.upweight), 1.0)


@dataclass(frozen=True)
class MixtureConfig:
    """The tokenize stage's config. `total_tokens` = 0 takes the largest mixture that meets every
    weight exactly within the epoch caps; a larger total fills up with the remaining sources."""
    sources: tuple[Source, ...]
    seq_len: int
    seed: int = 0
    shard_sequences: int = 256
    total_tokens: int = 0
    # the model folder whose tokenizer encodes the documents; "" = the Phi-4 tokenizer
    tokenizer: str = ""

    def __post_init__(self) -> None:
        sources = tuple(self.sources)
        if not sources or not all(isinstance(s, Source) for s in sources):
            raise ConfigError(f"mixture.sources must be a non-empty tuple of Source, got {self.sources!r}")
        names = [s.name for s in sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"mixture.sources: duplicate source name(s) {dup}")
        object.__setattr__(self, "sources", sources)
        for name, low in (("seq_len", 8), ("shard_sequences", 1), ("total_tokens", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"mixture.{name}={value!r} must be an integer >= {low}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"mixture.seed={self.seed!r} must be an integer")

    def weights(self) -> dict[str, float]:
        total = sum(s.weight for s in self.sources)
        return {s.name: s.weight / total for s in self.sources}


# --- mixture -----------------------------------------------------------------------------------
def mixture_plan(source_token_counts: dict[str, int], mix: MixtureConfig, total_tokens: int = 0) -> dict[str, float]:
    """Epochs to take of each source (1.5 = every document once, then half of them again).

    Token shares follow the weights. A source whose share would need more than its `epochs` cap
    is taken at the cap and the others share the rest in proportion to their weights (water
    filling); if every source hits its cap, the total is smaller than asked. `total_tokens` <= 0
    asks for the largest total at which every weight is met exactly (the first cap to bind decides).
    Sources with no tokens take 0 epochs and the rest renormalise. `plan_shares` gives the result.
    """
    names = [s.name for s in mix.sources]
    missing = [n for n in names if n not in source_token_counts]
    extra = [n for n in source_token_counts if n not in names]
    if missing or extra:
        raise ValueError(f"mixture_plan: token counts missing for sources {missing}, "
                         f"given for unknown sources {extra}")
    count = {n: int(source_token_counts[n]) for n in names}
    cap = {s.name: s.epochs * count[s.name] for s in mix.sources}
    weight = mix.weights()
    active = [n for n in names if count[n] > 0]
    if total_tokens <= 0:  # the largest total whose shares (over the non-empty sources) fit every cap
        wsum = sum(weight[n] for n in active)
        total_tokens = min((cap[n] * wsum / weight[n] for n in active), default=0.0)
    take = {n: 0.0 for n in names}
    remaining = float(total_tokens)
    while active and remaining > 0:
        wsum = sum(weight[n] for n in active)
        want = {n: remaining * weight[n] / wsum for n in active}
        capped = [n for n in active if want[n] >= cap[n]]
        if not capped:
            take.update(want)
            break
        for n in capped:
            take[n] = cap[n]
            remaining -= cap[n]
        active = [n for n in active if n not in capped]
    return {n: (take[n] / count[n] if count[n] else 0.0) for n in names}


def plan_shares(plan: dict[str, float], source_token_counts: dict[str, int]) -> dict[str, float]:
    """Token share of each source that `plan` (epochs per source) gives."""
    tokens = {n: e * source_token_counts[n] for n, e in plan.items()}
    total = sum(tokens.values())
    return {n: (t / total if total else 0.0) for n, t in tokens.items()}


# --- packing -----------------------------------------------------------------------------------
@dataclass
class PackStats:
    """What `pack` consumed and produced; tokens_in == tokens_packed + tokens_dropped."""
    docs: int = 0
    tokens_in: int = 0       # document tokens + one eot per document
    tokens_packed: int = 0
    tokens_dropped: int = 0  # the final partial row
    rows: int = 0


def doc_ids_for_row(row: np.ndarray, eot_id: int) -> np.ndarray:
    """0 at the row start, +1 at every eot (the eot opens the next document's group)."""
    ids = np.cumsum(row == eot_id, dtype=np.int32)
    return ids - ids[0]


def pack(token_docs: Iterable[Sequence[int]], seq_len: int, eot_id: int,
         stats: PackStats | None = None) -> Iterator[dict]:
    """Greedy packing: yields {"tokens", "doc_ids"} int32 rows of seq_len + 1 (module docstring).

    Streams: memory is one row plus the current document. Pass a `PackStats` to get the counts.
    """
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"pack: seq_len={seq_len!r} must be a positive integer")
    stats = stats if stats is not None else PackStats()
    width = seq_len + 1
    eot = np.array([eot_id], dtype=np.int32)
    pending: list[np.ndarray] = []
    n_pending = 0
    for doc in token_docs:
        piece = np.concatenate([np.asarray(doc, dtype=np.int32), eot])
        stats.docs += 1
        stats.tokens_in += len(piece)
        pending.append(piece)
        n_pending += len(piece)
        if n_pending < width:
            continue
        stream = np.concatenate(pending)
        n_rows = n_pending // width
        for r in range(n_rows):
            row = stream[r * width:(r + 1) * width]
            stats.rows += 1
            stats.tokens_packed += width
            yield {"tokens": row, "doc_ids": doc_ids_for_row(row, eot_id)}
        rest = stream[n_rows * width:]
        pending, n_pending = [rest], len(rest)
    stats.tokens_dropped += n_pending


# --- shards ------------------------------------------------------------------------------------
def token_files(run_dir: str | Path, folder: str = "tokens") -> list[Path]:
    files = sorted((Path(run_dir) / folder).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{Path(run_dir) / folder}: no token shards (run `phi4ray tokenize` first)")
    return files


def load_token_shards(run_dir: str | Path, folder: str = "tokens",
                      loss_mask: bool = False) -> Iterator[tuple[np.ndarray, ...]]:
    """(tokens, doc_ids) per shard of RUN/<folder> (RUN/tokens_midtrain for midtraining), in shard
    order: int32 arrays of shape (rows, seq_len + 1). Inputs are tokens[:, :-1], targets
    tokens[:, 1:], doc_ids[:, :-1] goes with the inputs. pyarrow only: usable by a trainer that has no Ray.
    loss_mask=True adds the shard's `loss_mask` (SFT rows, phi4ray.train.sft) as a third array."""
    for path in token_files(run_dir, folder):
        table = pq.read_table(path)
        tokens, doc_ids = fixed_width(table, "tokens", where=path), fixed_width(table, "doc_ids", where=path)
        if tokens.shape != doc_ids.shape:
            raise ValueError(f"{path}: tokens {tokens.shape} and doc_ids {doc_ids.shape} differ in shape")
        if not loss_mask:
            yield tokens, doc_ids
            continue
        mask = fixed_width(table, "loss_mask", where=path)
        if mask.shape != tokens.shape:
            raise ValueError(f"{path}: loss_mask {mask.shape} and tokens {tokens.shape} differ in shape")
        yield tokens, doc_ids, mask.astype(np.int8)
