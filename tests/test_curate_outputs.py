"""The cross-document half's Ray-free pieces: the per-shard final pass (phi4ray.data.curate.outputs),
the sample order's per-block reduction (phi4ray.data.curate.quality) and the funnel's checks."""
from __future__ import annotations

import json
import math
import random
import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phi4ray.data.corpus import builtin_sources
from phi4ray.data.curate.classifier import QualityClassifier, QualityClassifierConfig
from phi4ray.data.curate.config import CurateConfig, QualityConfig
from phi4ray.data.curate.documents import DocumentFilters
from phi4ray.data.curate.outputs import finalize_batch, finalize_shard, funnel, place_outputs
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


@pytest.fixture(scope="module")
def code_shard(tmp_path_factory):
    """One shard of one real Python source file, read as a code repository's file."""
    repo = tmp_path_factory.mktemp("repo")
    shutil.copyfile(__import__("textwrap").__file__, repo / "textwrap.py")
    desc = {"shard": "c1", "source": "code", "uri": f"file://{repo / 'textwrap.py'}", "format": "code",
            "root": f"file://{repo}"}
    (repo / "shards").mkdir()
    filter_shard(desc, DocumentFilters(CurateConfig(filters=())), repo / "shards")
    return desc, shard_file(repo / "shards", desc)


class SetScores:
    """A classifier as the final pass uses one (its score() alone), with a set score per text."""

    def __init__(self, by_text: dict[str, float]):
        self.by_text = by_text

    def score(self, texts) -> np.ndarray:
        return np.array([self.by_text[t] for t in texts])


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


def test_quality_threshold_drops_low_scoring_prose_under_its_reason_and_the_funnel_adds_up(shard, code_shard, tmp_path):
    (desc, path), (cdesc, cpath) = shard, code_shard
    rows = [r for r in pq.read_table(path).to_pylist() if r["status"] == "kept"]
    code = pq.read_table(cpath).to_pylist()
    assert len(rows) == 40 and [(r["status"], r["content_type"]) for r in code] == [("kept", "code")]
    low = {r["doc_id"] for r in rows[::4]}
    scores = {r["text"]: 0.2 if r["doc_id"] in low else 0.8 for r in rows}
    scores[rows[1]["text"]] = 0.5                 # at the threshold: kept
    scores[code[0]["text"]] = 0.0                 # code: scored, never dropped for quality
    dedup = {rows[0]["doc_id"]: "dedup:exact"}    # low-scoring too: it goes as the duplicate it is
    assert len(scores) == 41 and len(low) == 10
    run = tmp_path / "run"
    (run / "curate").mkdir(parents=True)
    final = run / "curate" / "final.tmp"
    counts = Counter(finalize_shard(path, desc, dedup, SetScores(scores), 0.5, final))
    counts += Counter(finalize_shard(cpath, cdesc, {}, SetScores(scores), 0.5, final))
    place_outputs(final, run)
    stats = funnel([str(path), str(cpath)], counts, run)
    assert (stats["read"], stats["kept"], stats["dropped"], stats["quarantined"]) == (43, 31, 10, 2)
    assert stats["dropped_by_filter"] == {"dedup": 1, "quality": 9} and stats["reasons"]["dropped:quality"] == 9
    assert stats["kept_by_source"] == {"code": 1, "web": 30}
    # kept aside with their reason and score, as every dropped document is
    aside = pq.read_table(run / "curate" / "dropped" / "web" / "s1.parquet").to_pylist()
    assert {r["doc_id"]: r["reason"] for r in aside} == {rows[0]["doc_id"]: "dedup:exact",
                                                         **{d: "quality" for d in low - {rows[0]["doc_id"]}}}
    assert all(r["quality_score"] == pytest.approx(0.2) for r in aside if r["reason"] == "quality")
    kept = pq.read_table(run / "curated" / "web" / "s1.parquet").column("doc_id").to_pylist()
    assert rows[1]["doc_id"] in kept and not low & set(kept)
    # 0 turns the threshold off: every document scored, none dropped for quality
    off = finalize_shard(path, desc, {}, SetScores(scores), 0.0, tmp_path / "off")
    assert off["kept"] == 40 and not any("quality" in k for k in off)


def test_the_default_threshold_is_the_classifiers_own_keep_decision(shard):
    """curate.quality.min_score's default: a document goes exactly when the classifier finds the
    annotator's "drop" likelier than "keep". A classifier with all-zero feature rows scores every
    text by its bias alone, p(keep) = sigmoid(b1 - b0): just either side of even odds."""
    _, path = shard
    batch = pq.read_table(path)
    kept = batch.column("status").to_pylist().count("kept")

    def bias_only(p_keep: float) -> QualityClassifier:
        cfg = QualityClassifierConfig(buckets=1024, dim=4)
        return QualityClassifier(cfg, [0, 1], np.zeros((1024, 4), np.float32), np.zeros((2, 4), np.float32),
                                 np.array([0.0, math.log(p_keep / (1 - p_keep))], np.float32))

    for p_keep, decision, dropped in ((0.49, 0, kept), (0.51, 1, 0)):
        clf = bias_only(p_keep)
        assert clf.score(["any text"])[0] == pytest.approx(p_keep, abs=1e-6)
        assert clf.predict_proba(["any text"]).argmax() == decision
        out = finalize_batch(batch, {}, clf, QualityConfig().min_score).to_pylist()
        assert sum(r["reason"] == "quality" for r in out) == dropped, p_keep


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
