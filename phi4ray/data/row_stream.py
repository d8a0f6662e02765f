"""Training rows as a stream: a global, resumable row order, and readers that take only a rank's
own rows from the shard files.

The order (`RowOrder`) is over rows numbered across the files in name order. Each epoch:
1. the files are permuted (seeded by seed and epoch);
2. cut into windows of `window` consecutive files;
3. the rows of each window are permuted (seeded by seed, epoch and window).
Every optimizer step takes `batch_size` consecutive positions of that sequence, and rank r of w
takes positions r, r + w, ... of them. The position is one global cursor, so a restart on another
number of workers continues exactly where the last checkpoint stopped.

Tokenize writes each source's rows to their own shards; the window is what mixes sources (and
files) inside a batch. What one rank holds is bounded by the window and the batch, never by
the corpus: the window's permutation (window x rows-per-shard int64), the file order (one int per
shard) and the rows of the current step, read row group by row group (`ParquetRows`).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

WINDOW = 16  # files per shuffle window: see the module docstring for what it bounds


class RowOrder:
    """Deterministic, resumable order over rows held in files of `sizes` rows each (one int: one
    file), independent of the number of workers. State: epoch and cursor (a position in the epoch)."""

    def __init__(self, sizes: int | Sequence[int], batch_size: int, seed: int = 0, window: int = WINDOW):
        self.sizes = np.atleast_1d(np.asarray(sizes, dtype=np.int64))
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self.n_rows = int(self.starts[-1])
        if self.n_rows < batch_size:
            raise ValueError(f"{self.n_rows} rows are fewer than one batch of {batch_size}")
        if window < 1:
            raise ValueError(f"window={window} must be >= 1")
        self.batch_size, self.seed, self.window = batch_size, seed, window
        self.epoch, self.cursor = 0, 0
        self._layout_key, self._layout = None, None
        self._perms: OrderedDict = OrderedDict()  # (epoch, window) -> row permutation, the last two

    def _epoch_layout(self):
        """(file order, position where each window starts) of the current epoch."""
        if self._layout_key != (self.seed, self.epoch):
            files = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.sizes))
            bounds = np.concatenate([[0], np.cumsum(self.sizes[files])])[::self.window]
            if bounds[-1] != self.n_rows:
                bounds = np.append(bounds, self.n_rows)
            self._layout_key, self._layout = (self.seed, self.epoch), (files, bounds)
        return self._layout

    def _window_rows(self, w: int, files: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        """Global row ids of window w in its shuffled order."""
        key = (self.seed, self.epoch, w)
        if key not in self._perms:
            members = files[w * self.window:(w + 1) * self.window]
            ids = np.concatenate([np.arange(self.starts[f], self.starts[f + 1]) for f in members])
            perm = np.random.default_rng(key).permutation(len(ids))
            self._perms[key] = ids[perm]
            while len(self._perms) > 2:  # a batch spans at most two windows
                self._perms.popitem(last=False)
        return self._perms[key]

    def next_rows(self) -> np.ndarray:
        """The next batch's global row ids, all ranks' together (rank r takes [r::world])."""
        if self.cursor + self.batch_size > self.n_rows:  # drop the ragged tail of an epoch
            self.epoch, self.cursor = self.epoch + 1, 0
        files, bounds = self._epoch_layout()
        lo, hi = self.cursor, self.cursor + self.batch_size
        out = []
        w = int(np.searchsorted(bounds, lo, side="right")) - 1
        while lo < hi:
            end = min(hi, int(bounds[w + 1]))
            out.append(self._window_rows(w, files, bounds)[lo - bounds[w]:end - bounds[w]])
            lo, w = end, w + 1
        self.cursor += self.batch_size
        return np.concatenate(out)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self.seed = state["epoch"], state["cursor"], state["seed"]


def passes(batch_size: int, world: int, micro: int) -> int:
    """Forward/backward passes per step on every rank: the largest share, ceil(batch/world), in
    micro-batches of `micro`."""
    return -(-((batch_size + world - 1) // world) // micro)


def micro_slices(n_mine: int, batch_size: int, world: int, micro: int) -> list[tuple[slice, float]]:
    """(rows of this rank's share, weight) per forward/backward pass. Every rank runs
    ceil(ceil(batch/world)/micro) passes, FSDP's collectives needing the same count everywhere; a
    rank whose share is smaller repeats its last slice at weight 0 (its gradient counts nothing)."""
    n = passes(batch_size, world, micro)
    real = [(slice(i, min(i + micro, n_mine)), 1.0) for i in range(0, n_mine, micro)]
    return real + [(real[-1][0], 0.0)] * (n - len(real))


# --- where rows come from ------------------------------------------------------------------------
class ArrayRows:
    """Rows held in memory as equal-length numpy arrays (tests, benchmarks, small SFT sets)."""

    def __init__(self, columns: dict[str, np.ndarray]):
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns differ in length: { {k: len(v) for k, v in columns.items()} }")
        self.columns = columns
        self.sizes = [lengths.pop()]
        self.rows_taken = 0

    def take(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        self.rows_taken += len(ids)
        return {k: v[ids] for k, v in self.columns.items()}


class ParquetRows:
    """Rows of a folder of Parquet files, read on demand: `take` decodes only the row groups that
    hold the asked rows. Opening reads each file's footer (schema, row groups), nothing else.

    `rows_taken` counts the rows handed out and `rows_decoded` the rows of the row groups read
    for them: what this reader ever held, for the tests and the benchmark."""

    def __init__(self, folder: str | Path, columns: Sequence[str], what: str = "rows"):
        self.folder, self.columns = Path(folder), tuple(columns)
        self.files = sorted(str(p) for p in self.folder.glob("*.parquet"))
        if not self.files:
            raise FileNotFoundError(f"{self.folder}: no {what} (*.parquet)")
        self.sizes, self._groups = [], []
        for f in self.files:
            meta = pq.read_metadata(f)
            names = meta.schema.to_arrow_schema().names
            missing = [c for c in self.columns if c not in names]
            if missing:
                raise ValueError(f"{f}: {what} file lacks columns {missing} (has {names})")
            groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            self.sizes.append(meta.num_rows)
            self._groups.append(np.concatenate([[0], np.cumsum(groups, dtype=np.int64)]))
        if not sum(self.sizes):
            raise ValueError(f"{self.folder}: no {what} (every file is empty)")
        self.starts = np.concatenate([[0], np.cumsum(self.sizes, dtype=np.int64)])
        self.rows_taken = self.rows_decoded = 0

    def locate(self, gid: int) -> tuple[str, int]:
        """(file, row in file) of a global row id."""
        f = int(np.searchsorted(self.starts, gid, side="right")) - 1
        return self.files[f], int(gid - self.starts[f])

    def take(self, ids: np.ndarray) -> pa.Table:
        """The rows `ids` (global ids) in that order, as one table of `columns`."""
        ids = np.asarray(ids, dtype=np.int64)
        file_of = np.searchsorted(self.starts, ids, side="right") - 1
        parts, order = [], []
        for f in np.unique(file_of):
            pick = np.nonzero(file_of == f)[0]
            local = ids[pick] - self.starts[f]
            bounds = self._groups[f]
            groups = np.unique(np.searchsorted(bounds, local, side="right") - 1)
            table = pq.ParquetFile(self.files[f]).read_row_groups(groups.tolist(), columns=list(self.columns))
            # row index inside the concatenation of the groups read
            offsets = np.concatenate([[0], np.cumsum(bounds[groups + 1] - bounds[groups])])
            g_of = np.searchsorted(groups, np.searchsorted(bounds, local, side="right") - 1)
            idx = offsets[g_of] + local - bounds[groups[g_of]]
            parts.append(table.take(pa.array(idx)))
            order.append(pick)
            self.rows_decoded += table.num_rows
        self.rows_taken += len(ids)
        table = pa.concat_tables(parts)
        back = np.empty(len(ids), dtype=np.int64)
        back[np.concatenate(order)] = np.arange(len(ids))
        return table.take(pa.array(back))


def fixed_width(table: pa.Table, name: str, width: int | None = None, where: str = "") -> np.ndarray:
    """A list<int> column of equal-length rows as a 2-D int32 array; `width` checks the length."""
    col = table.column(name).combine_chunks()
    if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type):
        raise ValueError(f"{where}: column {name!r} is {col.type}, expected list<int32>")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    found = sorted(set(lengths.tolist()))
    if len(found) > 1 or (width is not None and found and found[0] != width):
        raise ValueError(f"{where}: column {name!r} has rows of {found[:5]} tokens, expected {width or 'one length'}")
    w = found[0] if found else 0
    return pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int32).reshape(len(col), w)
