"""Exact and fuzzy deduplication helpers for the curate stage's Ray Data job.

Exact: `exact_key` hashes normalised text; the job groups rows by it and keeps one row per key.

Fuzzy: documents share a MinHash band key when their shingle sets are likely similar
(phi4ray/curate/minhash.py makes the signatures). The job groups rows by band key and hands each
group's doc ids to `group_edges`, which links them as a star from the smallest id: n - 1 edges for
a group of n, where linking every pair would cost n^2 (a boilerplate page shared by 10^5 documents
is one band group). The edges of all groups, collected on the driver, go to `components`
(union-find), and `to_drop` lists every document that is not its component's representative.

Scale: the driver holds only duplicate edges (at most one per document in a band group of two or
more), never the signatures or the documents, so its memory grows with the number of duplicates:
fine to a few hundred million edges. Past that, connected components run distributed on the edge
dataset, e.g. large-star / small-star (Kiveris et al., "Connected Components in MapReduce and
Beyond", 2014) as Ray Data rounds: group edges by node, link every larger neighbour (large-star) or
every neighbour (small-star) to the smallest id in the neighbourhood, repeat until no edge changes;
O(log n) rounds, each a groupby, and the final edges are (node, representative) as here.
"""
from __future__ import annotations

import unicodedata
from typing import Iterable

import pyarrow as pa
import xxhash

__all__ = ["exact_key", "group_edges", "components", "to_drop", "exact_losers", "star_edges"]


def exact_key(text: str) -> str:
    """128-bit hex key of the text up to Unicode compatibility forms and whitespace runs.

    Case is kept: "US" and "us", or `Foo` and `foo` in code, are different text, and documents
    that differ only in case are near-duplicates, which MinHash (over lowercased shingles) catches.
    128 bits: at 10^10 documents a chance collision (a wrongly dropped document) is ~10^-19.
    """
    if not isinstance(text, str):
        raise TypeError(f"exact_key needs a str, got {type(text).__name__}")
    norm = " ".join(unicodedata.normalize("NFKC", text).split())
    return xxhash.xxh3_128_hexdigest(norm.encode("utf-8", "surrogatepass"))


def group_edges(doc_ids: Iterable[str]) -> list[tuple[str, str]]:
    """Edges joining one band group: (smallest id, other) for each other distinct id."""
    ids = sorted(set(doc_ids))
    return [(ids[0], other) for other in ids[1:]]


def components(edges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Every node of the edges -> its component's representative, the smallest id in it.

    Union-find with union by rank and path compression (iterative: chains of millions of
    duplicates would overflow recursion), near-linear in the number of edges.
    """
    parent: dict[str, str] = {}
    rank: dict[str, int] = {}
    smallest: dict[str, str] = {}  # root -> smallest id of its set

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # compress: point the whole path at the root
            parent[x], x = root, parent[x]
        return root

    for a, b in edges:
        for x in (a, b):
            if x not in parent:
                parent[x], rank[x], smallest[x] = x, 0, x
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        if rank[ra] < rank[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        rank[ra] += rank[ra] == rank[rb]
        smallest[ra] = min(smallest[ra], smallest.pop(rb))
    return {x: smallest[find(x)] for x in parent}


def to_drop(comps: dict[str, str]) -> set[str]:
    """Every node that is not its component's representative: the duplicates to remove."""
    return {node for node, rep in comps.items() if node != rep}


# --- group functions for the job's groupby/map_groups (pyarrow tables in and out) -------------------
def exact_losers(group: pa.Table) -> pa.Table:
    """One exact-key group's doc ids to drop: all but the smallest, which stays."""
    ids = sorted(group.column("doc_id").to_pylist())
    return pa.table({"doc_id": pa.array(ids[1:], pa.string())})


def star_edges(group: pa.Table) -> pa.Table:
    """One band group's duplicate edges (`group_edges`) as columns a, b."""
    edges = group_edges(sorted(set(group.column("doc_id").to_pylist())))
    return pa.table({"a": pa.array([a for a, _ in edges], pa.string()),
                     "b": pa.array([b for _, b in edges], pa.string())})
