"""Dedup helpers: exact keys, band-group edges, union-find components against a brute-force BFS."""
from __future__ import annotations

from collections import Counter, defaultdict, deque

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phi4ray.data.curate.dedup import EDGE, EXACT, components, exact_key, group_edges, key_rows, resolve_partition, to_drop


def test_exact_key_ignores_whitespace_and_compatibility_forms_only():
    base = exact_key("The quick brown fox\njumps over the lazy dog.")
    assert exact_key("  The quick  brown fox jumps\tover the\r\nlazy dog.\n") == base
    assert exact_key("The ｑｕｉｃｋ brown fox jumps over the lazy dog.") == base  # full-width: NFKC
    assert exact_key("The quick brown fox jumps over the lazy dog!") != base
    assert exact_key("the quick brown fox jumps over the lazy dog.") != base  # case is kept
    assert exact_key("Thequick brown fox jumps over the lazy dog.") != base
    assert len(base) == 32 and exact_key("bad \ud800 surrogate") != exact_key("")
    with pytest.raises(TypeError, match="exact_key needs a str"):
        exact_key(None)


def test_group_edges_is_a_star_from_the_smallest_id():
    assert group_edges(["d", "b", "c", "b"]) == [("b", "c"), ("b", "d")]
    assert group_edges(["only"]) == []
    assert len(group_edges([f"doc{i:05d}" for i in range(10_000)])) == 9_999


def test_chain_is_one_component_represented_by_the_smallest_id():
    comps = components([("b", "c"), ("a", "b")])
    assert comps == {"a": "a", "b": "a", "c": "a"}
    assert to_drop(comps) == {"b", "c"}
    comps = components([("x", "y"), ("m", "n"), ("y", "z")])
    assert comps == {"m": "m", "n": "m", "x": "x", "y": "x", "z": "x"}
    assert components([]) == {} and to_drop({}) == set()


def test_a_long_chain_does_not_recurse():
    n = 200_000
    ids = [f"{i:07d}" for i in range(n)]
    comps = components(zip(ids[::-1][1:], ids[::-1][:-1]))  # edges from the far end inwards
    assert len(comps) == n and set(comps.values()) == {ids[0]}


def _bfs_components(edges):
    adj = defaultdict(set)
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    out = {}
    for start in adj:
        if start in out:
            continue
        seen, queue = {start}, deque([start])
        while queue:
            for nb in adj[queue.popleft()] - seen:
                seen.add(nb)
                queue.append(nb)
        rep = min(seen)
        out.update((node, rep) for node in seen)
    return out


_node = st.integers(0, 40).map(lambda i: f"doc-{i}")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_node, _node), max_size=80))
def test_components_match_brute_force_bfs(edges):
    comps = components(edges)
    assert comps == _bfs_components(edges)
    assert to_drop(comps) == {n for n, r in comps.items() if n != r}
    assert len(set(comps.values())) + len(to_drop(comps)) == len(comps)  # counts add up


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_node, min_size=1, max_size=12), max_size=15))
def test_band_groups_through_star_edges_give_the_same_components_as_all_pairs(groups):
    star = [e for g in groups for e in group_edges(g)]
    all_pairs = [(a, b) for g in groups for a in g for b in g if a < b]
    assert components(star) == _bfs_components(all_pairs)


# --- the job's shuffle: key rows, then each hash partition resolved whole ---------------------------
def _docs(n_texts: int, copies: list[int], bands_of) -> list[dict]:
    """Documents doc-<i>: text t copied copies[t] times; `bands_of(t)` its band keys."""
    docs, i = [], 0
    for t in range(n_texts):
        for _ in range(copies[t]):
            docs.append({"doc_id": f"doc-{i:03d}", "exact_key": f"{t:032x}", "bands": bands_of(t), "shard": f"s{i % 3}"})
            i += 1
    return docs


def _through_shuffle(docs: list[dict], parts: int) -> pa.Table:
    """key_rows per shard, hash-partitioned by key (as the job's repartition), each part resolved."""
    schema = pa.schema([("doc_id", pa.string()), ("exact_key", pa.string()), ("bands", pa.list_(pa.binary()))])
    shards = sorted({d["shard"] for d in docs})
    rows = pa.concat_tables([key_rows(pa.Table.from_pylist([d for d in docs if d["shard"] == s], schema=schema), s)
                             for s in shards])
    part_of = [hash(k) % parts for k in rows.column("key").to_pylist()]
    return pa.concat_tables([resolve_partition(rows.filter(pa.array([p == q for p in part_of]))) for q in range(parts)])


@settings(max_examples=100, deadline=None)
@given(copies=st.lists(st.integers(1, 4), min_size=1, max_size=12),
       band_of=st.lists(st.integers(0, 5), min_size=12, max_size=12), parts=st.integers(1, 4))
def test_one_shuffle_gives_the_exact_losers_and_the_components_of_distinct_texts(copies, band_of, parts):
    # text t has bands {t's own, shared band band_of[t]}: texts with the same band_of are near duplicates
    docs = _docs(len(copies), copies, lambda t: [b"\x00\x00own%d" % t, b"\x00\x01shared%d" % band_of[t]])
    out = _through_shuffle(docs, parts)
    exact = {r["doc_id"]: r for r in out.to_pylist() if r["dedup"] == EXACT}
    edges = [(r["rep"], r["doc_id"]) for r in out.to_pylist() if r["dedup"] == EDGE]
    by_text = defaultdict(list)
    for d in docs:
        by_text[d["exact_key"]].append(d)
    winners = {min(g, key=lambda d: d["doc_id"])["doc_id"] for g in by_text.values()}
    # every copy but the smallest id of its text loses, with its own shard, to that id
    assert set(exact) == {d["doc_id"] for d in docs} - winners
    assert all(r["shard"] == next(d["shard"] for d in docs if d["doc_id"] == i) for i, r in exact.items())
    # edges join winners only, and give the components of "shares a band" between distinct texts
    assert {n for e in edges for n in e} <= winners
    win_band = {d["doc_id"]: band_of[int(d["exact_key"], 16)] for d in docs if d["doc_id"] in winners}
    all_pairs = [(a, b) for a in win_band for b in win_band if a < b and win_band[a] == win_band[b]]
    assert components(edges) == _bfs_components(all_pairs)


def test_a_text_copied_many_times_adds_no_band_edges():
    docs = _docs(2, [500, 1], lambda t: [b"\x00\x00same"])  # two texts sharing their only band
    out = _through_shuffle(docs, 3)
    kinds = Counter(out.column("dedup").to_pylist())
    assert kinds == {EXACT: 499, EDGE: 1}
    with pytest.raises(ValueError, match="hex"):  # an exact key is the 32 hex digits of exact_key()
        key_rows(pa.table({"doc_id": ["a"], "exact_key": ["not hex"], "bands": pa.array([[]], pa.list_(pa.binary()))}), "s")
