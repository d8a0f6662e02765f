"""A shard streams (phi4ray.data.curate.shards): a file several times its batch budget is read, filtered
and written batch by batch, with memory bounded by the batch, not the file; every row read is
written once, and the verdicts do not depend on where the batches were cut."""
from __future__ import annotations

import dataclasses
import gzip
import io
import json
import random
import tracemalloc

import pyarrow.parquet as pq
import pytest
from warcio.warcwriter import WARCWriter

from phi4ray.data.curate.config import CurateConfig
from phi4ray.data.curate.documents import DocumentFilters
from phi4ray.data.curate.readers import Input, read_input
from phi4ray.data.curate.shards import batches, filter_shard, shard_file
from phi4ray.run.errors import ConfigError

MiB = 2**20


def _vocab() -> list[str]:
    rng = random.Random(1)
    return ["".join(rng.choice("etaoinshrdlucmfwyp") for _ in range(rng.randint(2, 9))) for _ in range(20000)]


def write_corpus(path, size: int, seed: int = 0) -> tuple[int, int]:
    """A JSONL file of ~`size` bytes of word documents (~4 KB each), a few planted exact copies and
    broken lines among them; returns (records, broken lines)."""
    rng, vocab = random.Random(seed), _vocab()
    n, written, docs, broken = 0, 0, [], 0
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt") as f:
        while written < size:
            if docs and n % 97 == 0:
                line = json.dumps({"text": rng.choice(docs)})  # an exact duplicate
            elif n % 211 == 0:
                line = '{"text": "cut short'  # broken JSON: quarantined
                broken += 1
            else:
                text = "\n\n".join(" ".join(rng.choices(vocab, k=rng.randint(60, 120))) + "."
                                   for _ in range(rng.randint(3, 8)))
                docs.append(text) if len(docs) < 50 else None
                line = json.dumps({"text": text, "url": f"https://x.test/{n}"})
            f.write(line + "\n")
            written += len(line) + 1
            n += 1
    return n, broken


def shard_for(path) -> dict:
    return {"shard": "s0", "source": "web", "uri": f"file://{path}", "format": "jsonl", "root": ""}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """{MiB: (path, (records, broken lines))} of JSONL files of 1 and 12 MiB."""
    root = tmp_path_factory.mktemp("stream")
    return {size: (root / f"{size}.jsonl", write_corpus(root / f"{size}.jsonl", size * MiB, seed=size))
            for size in (1, 12)}


def test_batches_cut_by_bytes_and_rows_and_keep_every_row():
    rows = [{"text": "x" * k} for k in (10, 10, 500, 10, 10, 10, 10, 2000, 10)]
    cut = list(batches(rows, max_bytes=600, max_rows=3))
    assert [r for b in cut for r in b] == rows  # nothing lost, order kept
    assert all(len(b) <= 3 for b in cut)
    assert [len(b) for b in cut] == [3, 3, 2, 1]  # 10+10+500 hit 3 rows; 2000 closes its own batch early
    assert list(batches([], 10, 10)) == []
    assert [len(b) for b in batches([{"text": ""}, {"text": None}] * 3, 10**6, 4)] == [4, 2]


def test_config_rejects_bad_batch_and_actor_settings():
    for bad in ({"batch_bytes": 0}, {"batch_rows": 0}, {"shard_actors": -1}):
        with pytest.raises(ConfigError):
            CurateConfig(**bad)
    assert CurateConfig().shard_actors == 0  # 0: derived from the cluster


@pytest.mark.parametrize("gz", [False, True])
def test_reader_peak_memory_is_a_chunk_and_a_record_not_the_file(corpora, tmp_path, gz):
    path, (n, _) = corpora[12]
    if gz:
        path = tmp_path / "big.jsonl.gz"
        path.write_bytes(gzip.compress(corpora[12][0].read_bytes(), 1))
    tracemalloc.start()
    count = sum(1 for _ in read_input(Input(f"file://{path}", "jsonl"), "web"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == n
    # a 1 MiB chunk read (with its decompressed output and the unconsumed input) plus a line
    assert peak < 5 * MiB < 12 * MiB / 2, peak


def shard_peak(path, tmp_path, filters) -> tuple[int, int]:
    """(rows written, peak traced Python memory) of one filter_shard."""
    filters([{"text": "warm up: imports and caches are not per file", "doc_id": "w"}])
    tracemalloc.start()
    rows = filter_shard(shard_for(path), filters, tmp_path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return rows, peak


def test_filter_shard_streams_a_file_larger_than_its_batch_budget(corpora, tmp_path):
    batch = 256 * 1024
    filters = DocumentFilters(CurateConfig(filters=(), batch_bytes=batch))  # the dedup keys still run
    (small, _), (big, (n, broken)) = corpora[1], corpora[12]
    (tmp_path / "small").mkdir()
    _, small_peak = shard_peak(small, tmp_path / "small", filters)
    rows, peak = shard_peak(big, tmp_path, filters)
    written = pq.ParquetFile(shard_file(tmp_path, {"shard": "s0"}))
    assert rows == written.metadata.num_rows == n  # every record read is written once
    assert written.metadata.num_row_groups >= 12 * MiB // (2 * batch)  # appended batch by batch
    # the reader's chunk plus one batch's rows and keys, whatever the file's size
    assert peak < 2 * MiB + 8 * batch < big.stat().st_size / 3, peak
    assert peak < 1.25 * small_peak, (peak, small_peak)
    statuses = written.read(columns=["status"]).column("status").to_pylist()
    assert statuses.count("quarantined") == broken > 0
    assert not (tmp_path / "s0.parquet.tmp").exists()


def test_verdicts_do_not_depend_on_the_batch_size(tmp_path):
    path = tmp_path / "in.jsonl"
    write_corpus(path, 1 * MiB, seed=3)
    tables = []
    for i, (b, r) in enumerate(((1, 8192), (64 * 1024, 7), (64 * MiB, 8192))):
        out = tmp_path / str(i)
        out.mkdir()
        cfg = dataclasses.replace(CurateConfig(filters=("corruption", "language")), batch_bytes=b, batch_rows=r)
        filter_shard(shard_for(path), DocumentFilters(cfg), out)
        tables.append(pq.read_table(shard_file(out, {"shard": "s0"})))
    assert tables[0].num_rows > 100
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])


def test_an_input_without_rows_still_writes_its_shard_file(tmp_path):
    """A WARC of request records only makes no row: the shard is done, with an empty file."""
    warc = tmp_path / "requests.warc"
    with open(warc, "wb") as f:
        w = WARCWriter(f, gzip=False)
        w.write_record(w.create_warc_record("http://x.test/", "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n")))
    shard = {"shard": "e", "source": "web", "uri": f"file://{warc}", "format": "warc", "root": ""}
    filters = DocumentFilters(CurateConfig(filters=()))
    assert filter_shard(shard, filters, tmp_path) == 0
    t = pq.read_table(shard_file(tmp_path, shard))
    assert t.num_rows == 0 and t.schema.equals(filters.schema)
