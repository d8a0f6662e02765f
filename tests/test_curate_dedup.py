"""Dedup helpers: exact keys, band-group edges, union-find components against a brute-force BFS."""
from __future__ import annotations

from collections import defaultdict, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phi4ray.curate.dedup import components, exact_key, group_edges, to_drop


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
