"""Pivotal Token Search (Phi-4 report, sec. 4.3), Ray-free: any `Sampler` (the Serve fleet, or a
scripted one in unit tests) and any oracle.

For a query Q and one sampled solution t_1..t_n, p(k) = p(success | Q + t_1..t_k) is estimated by
sampling completions from that exact token prefix and checking each with the oracle. Subdivide
splits the solution until every segment either changes p by less than p_gap or is one token:

    Subdivide(a, b):  if b - a <= 1 or |p(a) - p(b)| < p_gap: return [(a, b)]
                      m = cumulative log-prob midpoint of t_a+1..t_b
                      return Subdivide(a, m) + Subdivide(m, b)

One-token segments with |p(k+1) - p(k)| >= p_gap are pivotal tokens. Why the log-prob midpoint:
pivots are rare, surprising tokens; splitting the segment's surprisal in half isolates them in
fewer steps than splitting its length in half. p is memoised per prefix (as an in-flight task, so
two branches asking for the same prefix share one estimate), and p(0) reuses the rollouts that
decided whether the query is kept at all.

Each pivot becomes a DPO pair from rollouts already sampled at its prefix: for a token that raises
p, chosen = the token, rejected = the alternative first token whose rollouts failed most; for one
that lowers p, the other way round. Token ids end to end; text is decoded only for the oracle
and for people reading the pairs.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from phi4ray.posttrain.queries import PTS_KINDS
from phi4ray.run.errors import ConfigError
from phi4ray.serve.sampling import Sample, SampleRequest


@dataclass(frozen=True)
class PTSConfig:
    p_gap: float = 0.2
    samples_per_estimate: int = 16   # rollouts behind each p(prefix)
    p_min: float = 0.2               # keep queries with p_min <= p(success | Q) <= p_max
    p_max: float = 0.8
    max_tokens: int = 64             # solution length budget (the prefix counts towards it)
    temperature: float = 1.0
    solutions_per_query: int = 2     # one failing and one succeeding rollout when both exist
    split: str = "logprob"           # "logprob" (the report) or "middle" (naive, for benchmarks)
    memo: bool = True
    # > 0: each pivot the search finds is re-estimated on both sides with this many fresh rollouts
    # and kept only if the gap holds there too. The search's own p's are selected for a large gap
    # (with 8 rollouts an estimate's noise is about +-0.18), so without this a share of the pivots
    # are sampling noise; the fresh rollouts also widen the alternatives a pair is made from.
    confirm_samples: int = 0
    # the stage (actors/posttrain/pts.py): how many queries, PTS actors, sampling calls in flight per actor
    queries: int = 64
    # the user's queries (JSONL/Parquet, fsspec path; phi4ray.posttrain.queries); "" = the toy domain.
    # With a file, `queries` caps how many of its rows are searched.
    queries_file: str = ""
    queries_kind: str = "math"       # the kind of a row that names none: math, choice or code
    actors: int = 2
    concurrency: int = 16

    def __post_init__(self) -> None:
        if not 0 < self.p_gap <= 1:
            raise ConfigError(f"pts.p_gap={self.p_gap} must be in (0, 1]")
        if not 0 <= self.p_min <= self.p_max <= 1:
            raise ConfigError(f"pts: need 0 <= p_min ({self.p_min}) <= p_max ({self.p_max}) <= 1")
        if self.samples_per_estimate < 2:
            raise ConfigError(f"pts.samples_per_estimate={self.samples_per_estimate} must be >= 2")
        if self.confirm_samples < 0 or self.confirm_samples == 1:
            raise ConfigError(f"pts.confirm_samples={self.confirm_samples} must be 0 (off) or >= 2")
        if self.split not in ("logprob", "middle"):
            raise ConfigError(f"pts.split={self.split!r} must be 'logprob' or 'middle'")
        if self.queries_kind not in PTS_KINDS:
            raise ConfigError(f"pts.queries_kind={self.queries_kind!r} must be one of {', '.join(PTS_KINDS)}")
        for name in ("max_tokens", "solutions_per_query", "queries", "actors", "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pts.{name}={getattr(self, name)} must be >= 1")


@dataclass
class Estimate:
    p: float
    rollouts: list[tuple[int | None, bool]]  # (first sampled token, success) per rollout


@dataclass
class Pivot:
    position: int        # index of the pivotal token in the solution
    token: int
    p_before: float      # p(success | Q + solution[:position])
    p_after: float       # ... + the token


@dataclass
class SearchStats:
    samples: int = 0
    estimates: int = 0
    unconfirmed: int = 0  # pivots whose gap did not hold on fresh rollouts (confirm_samples > 0)


def split_point(logprobs: list[float], a: int, b: int, how: str = "logprob") -> int:
    """Index m, a < m < b, splitting solution[a:b]: where the cumulative surprisal reaches half the
    segment's total, or the middle when the segment has none (or how == "middle")."""
    if how == "logprob":
        surprisal = [max(0.0, -lp) for lp in logprobs[a:b]]
        total = sum(surprisal)
        if total > 0:
            acc = 0.0
            for i, s in enumerate(surprisal):
                acc += s
                if acc >= total / 2:
                    # the token that crosses the midpoint closes the left part; keep both parts non-empty
                    return min(max(a + i + 1, a + 1), b - 1)
    return (a + b) // 2


class PivotSearch:
    """PTS over one query. `oracle(solution_ids) -> bool` judges a complete solution (the prefix
    plus a sampled continuation); `sampler.sample(SampleRequest)` draws continuations."""

    def __init__(self, sampler, oracle: Callable[[list[int]], bool], query_ids: list[int], cfg: PTSConfig,
                 stop_ids: tuple[int, ...] = (), prefix_ids: Callable[[list[int]], list[int]] | None = None):
        self.sampler, self.oracle, self.query_ids, self.cfg = sampler, oracle, list(query_ids), cfg
        self.stop_ids = list(stop_ids)
        # how a prefix reaches the sampler: token ids as sampled (PTS), or text round-tripped
        # (the naive baseline: decode + re-encode, which can change the tokens)
        self.prefix_ids = prefix_ids or (lambda ids: ids)
        self.stats = SearchStats()
        self._memo: dict[tuple[int, ...], asyncio.Task] = {}

    async def rollouts(self, prefix: list[int], n: int = 0) -> tuple[list[Sample], Estimate]:
        """Sample n (default samples_per_estimate) continuations of Q + prefix and judge each: the
        samples and p's estimate."""
        budget = self.cfg.max_tokens - len(prefix)
        if budget <= 0:  # nothing left to sample: the prefix is the whole answer
            return [], Estimate(float(self.oracle(prefix)), [])
        sent = self.prefix_ids(prefix)
        samples: list[Sample] = await self.sampler.sample(SampleRequest(
            prompt_ids=self.query_ids + sent, n=n or self.cfg.samples_per_estimate, max_tokens=budget,
            temperature=self.cfg.temperature, stop_ids=self.stop_ids))
        self.stats.samples += len(samples)
        self.stats.estimates += 1
        rollouts = [(s.token_ids[0] if s.token_ids else None, bool(self.oracle(sent + s.token_ids))) for s in samples]
        return samples, Estimate(sum(ok for _, ok in rollouts) / len(rollouts), rollouts)

    async def _estimate(self, prefix: list[int]) -> Estimate:
        return (await self.rollouts(prefix))[1]

    async def estimate(self, prefix: list[int]) -> Estimate:
        if not self.cfg.memo:
            return await self._estimate(prefix)
        key = tuple(prefix)
        if key not in self._memo:
            self._memo[key] = asyncio.ensure_future(self._estimate(prefix))
        return await self._memo[key]

    def seed(self, prefix: list[int], est: Estimate) -> None:
        """Reuse an estimate made elsewhere (p(Q) from the rollouts that chose the solution)."""
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(est)
        self._memo[tuple(prefix)] = fut

    async def _p(self, sol: list[int], k: int, fresh: int = 0) -> float:
        """p after sol[:k]: the memoised estimate, or with `fresh` > 0 one of that many new rollouts."""
        if k == len(sol):  # the complete solution: success is known, nothing to sample
            return float(self.oracle(sol))
        return (await self.rollouts(sol[:k], fresh))[1].p if fresh else (await self.estimate(sol[:k])).p

    async def subdivide(self, sol: list[int], logprobs: list[float], a: int,
                        b: int) -> list[tuple[int, int, float, float]]:
        """Final segments as (a, b, p(a), p(b)): the caller reads the p's, never re-estimates them."""
        pa, pb = await asyncio.gather(self._p(sol, a), self._p(sol, b))
        if b - a <= 1 or abs(pa - pb) < self.cfg.p_gap:
            return [(a, b, pa, pb)]
        m = split_point(logprobs, a, b, self.cfg.split)
        left, right = await asyncio.gather(self.subdivide(sol, logprobs, a, m), self.subdivide(sol, logprobs, m, b))
        return left + right

    async def pivots(self, sol: list[int], logprobs: list[float]) -> list[Pivot]:
        found = [Pivot(a, sol[a], pa, pb) for a, b, pa, pb in await self.subdivide(sol, logprobs, 0, len(sol))
                 if b - a == 1 and abs(pb - pa) >= self.cfg.p_gap]
        if not self.cfg.confirm_samples:
            return found
        confirmed = [pv for pv in await asyncio.gather(*(self.confirm(sol, pv) for pv in found)) if pv is not None]
        self.stats.unconfirmed += len(found) - len(confirmed)
        return confirmed

    async def confirm(self, sol: list[int], pv: Pivot) -> Pivot | None:
        """The pivot with p's from confirm_samples fresh rollouts on each side, or None when the
        gap does not hold there. The fresh rollouts before it join the prefix's memoised estimate's
        (more alternative first tokens for its pair; its p stays the search's)."""
        n = self.cfg.confirm_samples
        (_, before), after = await asyncio.gather(
            self.rollouts(sol[:pv.position], n),
            self._p(sol, pv.position + 1, fresh=n))
        if self.cfg.memo:
            (await self.estimate(sol[:pv.position])).rollouts.extend(before.rollouts)
        if abs(after - before.p) < self.cfg.p_gap or (after > before.p) != (pv.p_after > pv.p_before):
            return None
        return Pivot(pv.position, pv.token, before.p, after)


@dataclass
class PivotPair:
    position: int
    prefix: list[int]
    chosen: int
    rejected: int
    p_before: float
    p_after: float
    p_chosen: float      # success rate of the rollouts that started with the chosen token
    p_rejected: float


def pair_from_pivot(pivot: Pivot, sol: list[int], est: Estimate) -> PivotPair | None:
    """Chosen/rejected single tokens from the rollouts already sampled at the pivot's prefix; None
    when no rollout there started with a different token (nothing to contrast with)."""
    by_token: dict[int, list[bool]] = defaultdict(list)
    for tok, ok in est.rollouts:
        if tok is not None and tok != pivot.token:
            by_token[tok].append(ok)
    if not by_token:
        return None
    rate = {t: sum(v) / len(v) for t, v in by_token.items()}
    raises = pivot.p_after > pivot.p_before
    # the sharpest contrast: the alternative that failed most (pivot raises p) or succeeded most
    # (pivot lowers p); ties go to the most sampled one, the policy's likeliest mistake or fix
    alt = min(rate, key=lambda t: ((rate[t] if raises else -rate[t]), -len(by_token[t])))
    if raises:
        chosen, rejected, pc, pr = pivot.token, alt, pivot.p_after, rate[alt]
    else:
        chosen, rejected, pc, pr = alt, pivot.token, rate[alt], pivot.p_after
    if pc <= pr:  # the alternative is no worse: not a preference the data supports
        return None
    return PivotPair(pivot.position, sol[:pivot.position], chosen, rejected, pivot.p_before, pivot.p_after, pc, pr)


@dataclass
class QueryResult:
    p_query: float
    kept: bool
    pairs: list[PivotPair] = field(default_factory=list)
    pivots: int = 0
    no_alternative: int = 0
    unconfirmed: int = 0
    samples: int = 0
    estimates: int = 0


async def search_query(sampler, oracle: Callable[[list[int]], bool], query_ids: list[int], cfg: PTSConfig,
                       stop_ids: tuple[int, ...] = (), prefix_ids=None) -> QueryResult:
    """The whole of PTS for one query: estimate p(Q), filter, search the chosen solutions, pair."""
    ps = PivotSearch(sampler, oracle, query_ids, cfg, stop_ids, prefix_ids)
    samples, root = await ps.rollouts([])
    oks = [ok for _, ok in root.rollouts]
    result = QueryResult(root.p, cfg.p_min <= root.p <= cfg.p_max)
    if result.kept:
        ps.seed([], root)
        # alternate failing and succeeding solutions so both kinds of pivot are searched
        fails = [s for s, ok in zip(samples, oks) if not ok]
        wins = [s for s, ok in zip(samples, oks) if ok]
        chosen = [s for pair in zip(fails, wins) for s in pair][:cfg.solutions_per_query]
        for sol in chosen:
            for pv in await ps.pivots(sol.token_ids, sol.logprobs):
                pair = pair_from_pivot(pv, sol.token_ids, await ps.estimate(sol.token_ids[:pv.position]))
                result.pivots += 1
                if pair is None:
                    result.no_alternative += 1
                elif all((p.prefix, p.chosen, p.rejected) != (pair.prefix, pair.chosen, pair.rejected)
                         for p in result.pairs):
                    result.pairs.append(pair)
    result.samples, result.estimates, result.unconfirmed = ps.stats.samples, ps.stats.estimates, ps.stats.unconfirmed
    return result


# --- the pts stage: result records and outputs (queries and oracles: phi4ray.posttrain.queries) ----------------
def query_record(query: dict, query_ids: list[int], res: QueryResult, model_id: str, wall_s: float, tok) -> dict:
    """One finished query as RUN/pts/queries.jsonl holds it: the funnel's figures and its pairs
    (token ids for the DPO trainer plus texts for reading, p estimates, query and model ids);
    `tok` is the searched model's tokenizer."""
    pairs = [{
        "pair_id": f"{query['id']}:{p.position}:{p.chosen}:{p.rejected}", "query_id": query["id"],
        "model_id": model_id, "prompt_ids": query_ids + p.prefix, "chosen_ids": [p.chosen],
        "rejected_ids": [p.rejected], "prompt_text": tok.decode(query_ids + p.prefix),
        "chosen_text": tok.decode([p.chosen]), "rejected_text": tok.decode([p.rejected]),
        "position": p.position, "p_query": res.p_query, "p_before": p.p_before, "p_after": p.p_after,
        "p_chosen": p.p_chosen, "p_rejected": p.p_rejected} for p in res.pairs]
    return {"query_id": query["id"], "kind": query.get("kind"), "p_query": res.p_query, "kept": res.kept, "pivots": res.pivots,
            "no_alternative": res.no_alternative, "unconfirmed": res.unconfirmed, "samples": res.samples,
            "estimates": res.estimates, "wall_s": wall_s, "pairs": pairs}


def search_report(results: list[dict], pts: PTSConfig) -> dict:
    """The search's funnel and cost, overall and per query kind; queries = kept + too_hard + too_easy."""
    kinds = sorted({r.get("kind") or "" for r in results})
    return {**_funnel(results, pts),
            "by_kind": {k: _funnel([r for r in results if (r.get("kind") or "") == k], pts) for k in kinds}}


def _funnel(results: list[dict], pts: PTSConfig) -> dict:
    kept = [r for r in results if r["kept"]]
    pivots = sum(r["pivots"] for r in results)
    samples = sum(r["samples"] for r in results)
    return {"queries": len(results), "kept": len(kept),
            "too_hard": sum(r["p_query"] < pts.p_min for r in results),
            "too_easy": sum(r["p_query"] > pts.p_max for r in results),
            "pivots": pivots, "pairs": sum(len(r["pairs"]) for r in results),
            "pivots_without_alternative": sum(r["no_alternative"] for r in results),
            # found by the search, dropped by the fresh re-estimate (not in "pivots")
            "pivots_unconfirmed": sum(r.get("unconfirmed", 0) for r in results),
            "samples": samples, "p_estimates": sum(r["estimates"] for r in results),
            "samples_per_pivot": samples / pivots if pivots else None,
            "mean_p_query": sum(r["p_query"] for r in results) / max(1, len(results))}


def write_pairs(results: list[dict], out: Path) -> int:
    """out/pairs.parquet: every result's pairs; returns how many."""
    rows = [p for r in results for p in r["pairs"]]
    out.mkdir(parents=True, exist_ok=True)
    if rows:
        pq.write_table(pa.Table.from_pylist(rows), out / "pairs.parquet")
    return len(rows)


def plot_p_query(results: list[dict], pts: PTSConfig, path: Path) -> None:
    """A histogram of p(success | query), with the kept band's edges."""
    import matplotlib  # deferred: plotting libraries load only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after the backend is chosen

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist([r["p_query"] for r in results], bins=20, range=(0, 1))
    for x in (pts.p_min, pts.p_max):
        ax.axvline(x, color="k", ls="--")
    ax.set(xlabel="p(success | query)", ylabel="queries", title="PTS: queries kept between the lines")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
