"""The streaming row order and readers (phi4ray.data.row_stream): what a rank reads, and exact resume."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi4ray.data.row_stream import ParquetRows, RowOrder
from phi4ray.train.dpo import PairLoader
from phi4ray.train.step import SequenceLoader

SIZES = [7, 30, 1, 12, 20, 5]  # rows per file: uneven on purpose


@pytest.fixture
def shards(tmp_path):
    """Files whose row r holds the global id r in every position (tokens) and its file (doc_ids)."""
    start = 0
    for k, n in enumerate(SIZES):
        ids = np.arange(start, start + n, dtype=np.int32)
        tokens = [np.full(5, i, dtype=np.int32) for i in ids]
        docs = [np.full(5, k, dtype=np.int32) for _ in ids]
        pq.write_table(pa.table({"tokens": tokens, "doc_ids": docs}), tmp_path / f"shard-{k:02d}.parquet",
                       row_group_size=3)
        start += n
    return tmp_path


def test_every_epoch_is_a_permutation_of_all_rows_and_mixes_files():
    order = RowOrder(SIZES, batch_size=5, seed=1, window=2)
    per_epoch = sum(SIZES) // 5
    for _ in range(2):
        epoch = np.concatenate([order.next_rows() for _ in range(per_epoch)])
        assert len(set(epoch.tolist())) == len(epoch) == per_epoch * 5  # no row twice in an epoch
    # a window shuffles the rows of its files together: batches hold rows of more than one file
    starts = np.cumsum([0] + SIZES)
    files_in_batch = [len(set(np.searchsorted(starts, b, side="right").tolist()))
                      for b in np.split(epoch, per_epoch)]
    assert max(files_in_batch) > 1


def test_order_depends_on_seed_and_window_not_on_how_it_is_read():
    a = [RowOrder(SIZES, 8, seed=3).next_rows() for _ in range(1)][0]
    b = RowOrder(SIZES, 8, seed=4).next_rows()
    assert not np.array_equal(a, b)
    c, d = RowOrder(SIZES, 8, seed=3, window=1), RowOrder(SIZES, 8, seed=3, window=1)
    assert all(np.array_equal(c.next_rows(), d.next_rows()) for _ in range(20))  # crosses epochs


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_read_only_their_rows_and_together_read_the_batch(shards, world):
    loaders = [SequenceLoader.from_shards(shards, 4, batch_size=6, seed=0) for _ in range(world)]
    reference = RowOrder(SIZES, 6, seed=0)
    for _ in range(12):  # past one epoch of 75 rows
        want = reference.next_rows()
        got = [loaders[r].next_batch(r, world, 2, "cpu") for r in range(world)]
        for r in range(world):
            tokens = np.concatenate([mb[0].numpy() for mb in got[r]])
            assert tokens[:, 0].tolist() == want[r::world].tolist()  # the rows asked, in order
            assert (tokens == tokens[:, :1]).all()
    for r, loader in enumerate(loaders):
        assert loader.rows.rows_taken == sum(len(range(r, 6, world)) for _ in range(12))
        # decoded: whole row groups of 3 rows, never the corpus
        assert loader.rows.rows_taken <= loader.rows.rows_decoded <= 3 * loader.rows.rows_taken


def test_resume_after_a_world_size_change_continues_the_same_stream(shards):
    one = SequenceLoader.from_shards(shards, 4, batch_size=6, seed=5)
    seen = [one.next_rows() for _ in range(9)]
    two = SequenceLoader.from_shards(shards, 4, batch_size=6, seed=5)
    for _ in range(4):
        two.next_rows()
    state = two.state_dict()
    three = [SequenceLoader.from_shards(shards, 4, batch_size=6, seed=5) for _ in range(3)]
    for loader in three:
        loader.load_state_dict(state)
    for step in range(4, 9):
        rows = [np.concatenate([mb[0].numpy()[:, 0] for mb in three[r].next_batch(r, 3, 1, "cpu")]) for r in range(3)]
        assert sorted(np.concatenate(rows).tolist()) == sorted(seen[step].tolist())


def test_bad_shards_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no packed rows"):
        SequenceLoader.from_shards(tmp_path, 4, batch_size=2)
    pq.write_table(pa.table({"tokens": [[1, 2, 3]]}), tmp_path / "a.parquet")
    with pytest.raises(ValueError, match=r"a.parquet: packed rows file lacks columns \['doc_ids'\]"):
        SequenceLoader.from_shards(tmp_path, 2, batch_size=1)
    with pytest.raises(ValueError, match="1 rows are fewer than one batch of 2"):
        RowOrder(ParquetRows(tmp_path, ["tokens"]).sizes, 2)


def test_pair_loader_reads_pairs_from_files(tmp_path):
    n = 10
    table = pa.table({"prompt_ids": [[i, 1] for i in range(n)], "chosen_ids": [[i] for i in range(n)],
                      "rejected_ids": [[i + 100] for i in range(n)],
                      "ref_chosen_logp": [-float(i) for i in range(n)], "ref_rejected_logp": [-1.0] * n})
    pq.write_table(table.slice(0, 4), tmp_path / "a.parquet")
    pq.write_table(table.slice(4), tmp_path / "b.parquet")
    files, order = PairLoader.from_folder(str(tmp_path), 4, seed=2), RowOrder([4, 6], 4, seed=2)
    memory = PairLoader(table.to_pydict(), 4, seed=2)
    assert memory.next_batch(0, 1, 4)[0]["chosen_ids"] == [[i] for i in RowOrder(10, 4, seed=2).next_rows()]
    for _ in range(5):
        got = files.next_batch(1, 2, 1)
        assert [mb["chosen_ids"][0][0] for mb in got] == order.next_rows()[1::2].tolist()
        assert all(mb["chosen_ids"][0][0] == -mb["ref_chosen_logp"][0] for mb in got)
    assert files.rows.rows_taken == 10
    bad = table.to_pydict()
    bad["chosen_ids"][3] = []
    pq.write_table(pa.table(bad), tmp_path / "b.parquet")
    (tmp_path / "a.parquet").unlink()
    loader = PairLoader.from_folder(str(tmp_path), 10)
    with pytest.raises(ValueError, match=r"b.parquet: pair 3 has an empty prompt, chosen or rejected side"):
        loader.next_batch(0, 1, 10)
