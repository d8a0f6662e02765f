"""Which documents synthesis starts from (phi4ray.data.synth.seeds): a stable rank per document, each
source's first documents by it, the same however the documents are split or ordered."""
from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi4ray.data.synth import seeds
from phi4ray.data.synth.seeds import order, pick_documents, pool_size, prose_seeds, rank, top_documents
from phi4ray.presets import run_preset
from phi4ray.run.overrides import apply_overrides


def config(n_seeds: int = 2, seed: int = 0):
    return apply_overrides(run_preset("tiny"), [f"synth.seeds={n_seeds}", f"seed={seed}", "synth.passage_min_chars=40",
                                               "synth.passage_max_chars=1000"])


def text(i: int) -> str:
    return f"Document {i} says that water carries sand downhill, and faster water carries larger stones."


def corpus(n: int = 40, seed: int = 0) -> list[dict]:
    """Documents whose page scores come in five levels (ties broken by rank)."""
    return [{"source": src, "doc_id": f"d{i}", "text": text(i), "rank": rank(seed, src, f"d{i}"), "score": (i % 5) / 5}
            for src in ("web", "books") for i in range(n)]


def test_rank_is_stable_and_depends_on_seed_source_and_id():
    r = rank(0, "web", "d1")
    assert r == rank(0, "web", "d1") and 0 <= r < 2 ** 63
    assert len({r, rank(1, "web", "d1"), rank(0, "books", "d1"), rank(0, "web", "d2")}) == 4


def test_top_documents_pick_k_per_source_whatever_the_order_or_split():
    cfg = config()
    docs = corpus()
    k = pool_size("web", cfg.synth)
    assert k == 8 and pool_size("code", cfg.synth) == 16
    want = {src: sorted((d for d in docs if d["source"] == src), key=order)[:k] for src in ("web", "books")}
    assert top_documents(docs, cfg.synth) == want
    shuffled = docs[:]
    random.Random(3).shuffle(shuffled)
    assert top_documents(shuffled, cfg.synth) == want
    # blocks' picks, then a pick over those: what the Ray pass does
    blocks = [top_documents(shuffled[i:i + 7], cfg.synth) for i in range(0, len(shuffled), 7)]
    assert top_documents([d for b in blocks for v in b.values() for d in v], cfg.synth) == want
    # not just the first ids: the rank decides
    assert {d["doc_id"] for d in want["web"]} != {f"d{i}" for i in range(k)}
    # a repeated doc_id with other text sorts the same way in any order
    twins = [{**docs[0], "text": "b"}, {**docs[0], "text": "a"}]
    assert top_documents(twins, cfg.synth) == top_documents(twins[::-1], cfg.synth)
    # another run seed draws other documents
    assert top_documents(corpus(seed=1), cfg.synth)["web"] != want["web"]


def test_seeds_from_candidates_equal_seeds_from_every_document():
    cfg = config()
    docs = corpus()
    every = {src: [d for d in docs if d["source"] == src] for src in ("web", "books")}
    passages = prose_seeds(top_documents(docs, cfg.synth), cfg.synth)
    assert passages == prose_seeds(every, cfg.synth) and len(passages) == 2
    # the prose pool is the first 4 * seeds documents of all prose sources together
    pool = sorted(docs, key=order)[:4 * cfg.synth.seeds]
    assert {p["seed_id"].split("#")[0] for p in passages} <= {f"{d['source']}:{d['doc_id']}" for d in pool}


def test_seeds_are_the_best_passages_of_the_best_pages():
    """Page then passage: the pool is the best-scored pages; of their passages, the densest in facts
    and reasoning become seeds, whatever their place in the page order."""
    cfg = config(n_seeds=2)
    docs = corpus()
    top = top_documents(docs, cfg.synth)
    assert all(d["score"] == 0.8 for d in top["web"])  # the best level (8 documents per source)
    plain = "A short note on the weather, written on a quiet afternoon at the coast with friends."
    dense = ("In 1848 the river rose 3.2 m because the dam failed; therefore the mill stopped, and hence "
             "the town lost 40% of its flour. It follows that the dam caused the shortage.")
    last = top["web"][-1]["doc_id"]  # the dense passage sits in the last page of the order
    pages = [{**d, "text": dense if d["doc_id"] == last else plain} for d in top["web"]]
    picked = prose_seeds({"web": pages}, cfg.synth)
    assert picked[0]["text"] == dense and len(picked) == 2
    assert seeds.passage_score(dense) > seeds.passage_score(plain)


def write(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_pick_documents_reads_files_in_batches_with_row_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(seeds, "READ_ROWS", 3)  # rows are counted across batches
    cfg = config(n_seeds=10)
    rows = [{"text": text(i) if i % 4 else " "} for i in range(10)]
    write(tmp_path / "curated" / "web" / "a.parquet", rows)
    write(tmp_path / "curated" / "code" / "b.parquet", [{"text": None}])
    origin, docs = pick_documents(tmp_path, cfg)
    assert origin == "curated" and list(docs) == ["web"]  # null/blank texts seed nothing
    assert sorted(d["doc_id"] for d in docs["web"]) == sorted(f"web/a.parquet:{i}" for i in range(10) if i % 4)
    assert all(d["text"] == text(int(d["doc_id"].split(":")[1])) for d in docs["web"])
    write(tmp_path / "curated" / "web" / "c.parquet", [{"id": "x"}])
    with pytest.raises(ValueError, match="c.parquet has no 'text' column"):
        pick_documents(tmp_path, cfg)


def test_pick_documents_same_documents_in_other_files_same_seeds(tmp_path):
    cfg = config()
    docs = [{"doc_id": d["doc_id"], "text": d["text"]} for d in corpus() if d["source"] == "web"]
    write(tmp_path / "one" / "curated" / "web" / "all.parquet", docs)
    for j in range(3):
        write(tmp_path / "three" / "curated" / "web" / f"part-{j}.parquet", docs[j::3][::-1])
    one, three = (pick_documents(tmp_path / d, cfg)[1] for d in ("one", "three"))
    assert one == three and len(one["web"]) == pool_size("web", cfg.synth)
    assert prose_seeds(one, cfg.synth) == prose_seeds(three, cfg.synth)
