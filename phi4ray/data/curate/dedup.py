"""Exact and fuzzy deduplication helpers for the curate stage's Ray Data job.

Both kinds go through one hash shuffle. Every kept document gives key rows (`key_rows`): its
exact key (hashed normalised text) and one key per MinHash band (phi4ray/data/curate/minhash.py),
each with the doc id, the exact key and the document's shard. The job hash-partitions the rows by
key and `resolve_partition` reads each partition whole:
- an exact-key group keeps its smallest doc id; the others are losers ("dedup:exact");
- a band group is first collapsed to one member per exact key (the smallest id, which is also the
  exact group's winner: exact copies share every band key), then linked as a star from the
  smallest id (`group_edges`): n - 1 edges for n distinct texts, where linking every pair would
  cost n^2. A page copied 10^5 times is one exact group and adds no band edges.
Groups of one (almost every key) are filtered out by a vectorised count before any Python runs.
The edges of all groups, collected on the driver, go to `components` (union-find), and `to_drop`
lists every document that is not its component's representative.

Scale: the driver holds only duplicate edges (at most one per document in a band group of two or
more), never the signatures or the documents, so its memory grows with the number of near
duplicates: fine to a few hundred million edges. Past that, connected components run distributed
on the edge dataset, e.g. large-star / small-star (Kiveris et al., "Connected Components in
MapReduce and Beyond", 2014) as Ray Data rounds: group edges by node, link every larger neighbour
(large-star) or every neighbour (small-star) to the smallest id in the neighbourhood, repeat until
no edge changes; O(log n) rounds, each a groupby, and the final edges are (node, representative).
"""
from __future__ import annotations

import unicodedata
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

__all__ = ["exact_key", "group_edges", "components", "to_drop", "key_rows", "resolve_partition", "KEYS", "GROUPED"]


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


# --- the job's shuffle: key rows in, verdicts and edges out (pyarrow tables) -------------------------
EXACT_PREFIX = b"\xff\xff"  # band keys start with a 2-byte band index < 0xffff: an exact key never equals one
EXACT, EDGE = "dedup:exact", "edge"
KEYS = pa.schema([("key", pa.binary()), ("doc_id", pa.string()), ("exact_key", pa.string()), ("shard", pa.string())])
# dedup: EXACT (doc_id lost to rep, same text) or EDGE (doc_id and rep are near duplicates)
GROUPED = pa.schema([("doc_id", pa.string()), ("shard", pa.string()), ("dedup", pa.string()),
                     ("rep", pa.string()), ("rep_shard", pa.string())])


def key_rows(docs: pa.Table, shard: str) -> pa.Table:
    """`docs` (doc_id, exact_key, bands: the kept rows of one shard) -> KEYS rows: one per exact
    key (EXACT_PREFIX + its 16 bytes) and one per band key."""
    ids, exact = docs.column("doc_id").combine_chunks(), docs.column("exact_key").combine_chunks()
    bands = docs.column("bands").combine_chunks()
    parent = pc.list_parent_indices(bands)
    exact_bin = pa.array([EXACT_PREFIX + bytes.fromhex(k) for k in exact.to_pylist()], pa.binary())
    keys = pa.concat_arrays([exact_bin, pc.list_flatten(bands).cast(pa.binary())])
    rows = pa.concat_arrays([pa.array(range(len(ids)), pa.int64()), parent.cast(pa.int64())])
    return pa.table({"key": keys, "doc_id": ids.take(rows), "exact_key": exact.take(rows),
                     "shard": pa.array([shard] * len(keys), pa.string())}, schema=KEYS)


def resolve_partition(part: pa.Table) -> pa.Table:
    """A whole hash partition of KEYS rows (every row of a key is in it) -> GROUPED rows: exact
    losers and star edges between distinct texts of a band group."""
    counts = part.group_by("key").aggregate([("doc_id", "count")])
    shared = counts.filter(pc.greater(counts.column("doc_id_count"), 1)).column("key")
    dup = part.filter(pc.is_in(part.column("key"), value_set=shared))
    groups: dict[bytes, list[tuple[str, str, str]]] = {}
    for key, doc, ek, shard in zip(*(dup.column(c).to_pylist() for c in ("key", "doc_id", "exact_key", "shard"))):
        groups.setdefault(key, []).append((doc, ek, shard))
    out = []
    for key, members in groups.items():
        members.sort()
        if key.startswith(EXACT_PREFIX):
            rep, _, rep_shard = members[0]
            out += [(doc, shard, EXACT, rep, rep_shard) for doc, _, shard in members[1:]]
            continue
        shard_of: dict[str, str] = {}  # one member per exact key (its smallest doc id here) -> shard
        seen: set[str] = set()
        for doc, ek, shard in members:
            if ek not in seen:
                seen.add(ek)
                shard_of[doc] = shard
        out += [(b, shard_of[b], EDGE, a, shard_of[a]) for a, b in group_edges(shard_of)]
    return pa.Table.from_pylist([dict(zip(GROUPED.names, r)) for r in out], schema=GROUPED)
