"""The cross-document half's Ray-free pieces: the per-shard final pass (phi4ray.data.curate.outputs),
the sample order's per-block reduction (phi4ray.data.curate.quality) and the funnel's checks."""
from __future__ import annotations

import json
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phi4ray.data.corpus import builtin_sources
from phi4ray.data.curate.config import CurateConfig
from phi4ray.data.curate.documents import DocumentFilters
from phi4ray.data.curate.outputs import finalize_shard, funnel, place_outputs
from phi4ray.data.curate.quality import sample_rank, top_ranked
from phi4ray.data.curate.shards import filter_shard, shard_file


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """One shard file of 40 real documents, two broken lines, in row groups of ~5 rows."""
    root = tmp_path_factory.mktemp("final")
    docs = [d["text"] for d in builtin_sources(40)["web"]][:40]
    src = root / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs) + "{broken\n" + "[1]\n")
    desc = {"shard": "s1", "source": "web", "uri": f"file://{src}", "format": "jsonl", "root": ""}
    (root / "shards").mkdir()
    filter_shard(desc, DocumentFilters(CurateConfig(filters=(), batch_rows=5)), root / "shards")
    return desc, shard_file(root / "shards", desc)


def test_finalize_shard_applies_its_verdicts_and_writes_each_status_once(shard, tmp_path):
    desc, path = shard
    rows = pq.read_table(path).to_pylist()
    kept = [r["doc_id"] for r in rows if r["status"] == "kept"]
    assert pq.ParquetFile(path).num_row_groups > 5 and len(kept) == 40
    dedup = {kept[3]: "dedup:exact", kept[17]: "dedup:minhash",
             "not-in-this-shard": "dedup:exact"}  # another shard's verdict changes nothing here
    counts = finalize_shard(path, desc, dedup, None, 0.0, tmp_path)
    quarantined = {k: v for k, v in counts.items() if k.startswith("quarantined:")}
    assert {k: v for k, v in counts.items() if k not in quarantined} == {
        "kept": 38, "dropped:dedup:exact": 1, "dropped:dedup:minhash": 1}
    assert sum(quarantined.values()) == 2 and "quarantined:json line is list, not an object" in quarantined
    out = {s: pq.read_table(tmp_path / s / "web" / "s1.parquet") for s in ("kept", "dropped", "quarantined")}
    assert [out[s].num_rows for s in out] == [38, 2, 2]
    # kept rows in file order, without the band keys, with a score column; verdicts only on kept rows
    assert out["kept"].column("doc_id").to_pylist() == [d for d in kept if d not in dedup]
    assert "bands" not in out["kept"].schema.names and "quality_score" in out["kept"].schema.names
    assert dict(zip(out["dropped"].column("doc_id").to_pylist(), out["dropped"].column("reason").to_pylist())) == {
        kept[3]: "dedup:exact", kept[17]: "dedup:minhash"}
    # the same inputs give the same files
    again = tmp_path / "again"
    assert finalize_shard(path, desc, dedup, None, 0.0, again) == counts
    assert pq.read_table(again / "kept" / "web" / "s1.parquet").equals(out["kept"])


def test_place_outputs_and_funnel_add_up_and_catch_a_lost_row(shard, tmp_path):
    desc, path = shard
    run = tmp_path / "run"
    (run / "curate").mkdir(parents=True)
    counts = Counter(finalize_shard(path, desc, {}, None, 0.0, run / "curate" / "final.tmp"))
    place_outputs(run / "curate" / "final.tmp", run)
    stats = funnel([str(path)], counts, run)
    assert (stats["read"], stats["kept"], stats["dropped"], stats["quarantined"]) == (42, 40, 0, 2)
    assert stats["kept_by_source"] == {"web": 40} and not (run / "curate" / "final.tmp").exists()
    with pytest.raises(RuntimeError, match="counted"):
        funnel([str(path)], counts - Counter({"kept": 1}) + Counter({"dropped:x": 1}), run)
    pq.write_table(pq.read_table(run / "curated" / "web" / "s1.parquet").slice(1), run / "curated" / "web" / "s1.parquet")
    with pytest.raises(RuntimeError, match="do not add up"):
        funnel([str(path)], counts, run)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text("0123456789abcdef", min_size=4, max_size=8), unique=True, max_size=60),
       st.integers(1, 10), st.integers(1, 7))
def test_top_of_the_blocks_tops_is_the_global_top(ids, k, blocks):
    """What the Ray job computes (top k per block, then sort and limit) is the first k by rank."""
    rng = random.Random(len(ids))
    shuffled = rng.sample(ids, len(ids))
    parts = [pa.table({"doc_id": pa.array(shuffled[i::blocks], pa.string())}) for i in range(blocks)]
    merged = pa.concat_tables([top_ranked(p, k) for p in parts])
    got = merged.sort_by([("rank", "ascending"), ("doc_id", "ascending")]).slice(0, k).column("doc_id").to_pylist()
    assert got == sorted(ids, key=lambda d: (sample_rank(d), d))[:k]
