"""Pivotal Token Search against a scripted sampler whose p(success | prefix) is known exactly."""
from __future__ import annotations

import asyncio
import random

import pytest

from phi4ray.posttrain.pts import PivotSearch, PTSConfig, pair_from_pivot, search_query, split_point
from phi4ray.run.errors import ConfigError
from phi4ray.serve.sampling import Sample

WIN, LOSE = 1, 2          # the last token of every rollout says whether it succeeded
QUERY = [100, 101, 102]


class Scripted:
    """p(success | Q + solution[:k]) = p_of_k(k), realised exactly: of n rollouts, round(n p)
    succeed. Successful rollouts start with token 7000 + k, failing ones with 8000 + k."""

    def __init__(self, p_of_k, solutions=()):
        self.p_of_k, self.solutions, self.calls = p_of_k, list(solutions), []

    async def sample(self, req):
        k = len(req.prompt_ids) - len(QUERY)
        self.calls.append(k)
        if k == 0 and self.solutions:  # the rollouts PTS picks its solutions from
            return [Sample(list(s), [-0.1] * len(s), "stop") for s in self.solutions][:req.n] + [
                Sample([8000, LOSE], [-1.0, -1.0], "stop")] * (req.n - len(self.solutions))
        wins = round(req.n * self.p_of_k(k))
        return [Sample([7000 + k, WIN] if i < wins else [8000 + k, LOSE], [-1.0, -1.0], "stop") for i in range(req.n)]


def oracle(ids):
    return bool(ids) and ids[-1] == WIN


def steps(L, base, jumps):
    """p(k) = base + the jumps of every pivot index < k (token i is included once k > i)."""
    return lambda k: min(1.0, max(0.0, base + sum(j for i, j in jumps.items() if i < k)))


def run_pivots(p_of_k, sol, logprobs, cfg):
    search = PivotSearch(Scripted(p_of_k), oracle, QUERY, cfg)
    pivots = asyncio.run(search.pivots(sol, logprobs))
    return pivots, search.stats


def test_single_pivot_and_number_of_estimates():
    L = 16
    sol = list(range(10, 10 + L - 1)) + [WIN]
    lps = [-0.1] * L
    lps[5] = -5.0  # the pivot is the surprising token
    p = steps(L, 0.75, {5: 0.25})
    cfg = PTSConfig(samples_per_estimate=20, p_gap=0.2)
    pivots, stats = run_pivots(p, sol, lps, cfg)
    assert [(pv.position, pv.token, pv.p_before, pv.p_after) for pv in pivots] == [(5, 15, 0.75, 1.0)]
    # log-prob midpoint: (0,16) -> m=6; (0,6) -> m=5; prefixes 6 and 5 (0 is estimated too here)
    assert stats.estimates == 3
    _, mid = run_pivots(p, sol, lps, PTSConfig(samples_per_estimate=20, split="middle"))
    assert mid.estimates == 5  # middle split: prefixes 0, 8, 4, 6, 5
    _, naive = run_pivots(p, sol, lps, PTSConfig(samples_per_estimate=20, split="middle", memo=False))
    assert naive.estimates > mid.estimates


@pytest.mark.parametrize("seed", range(25))
def test_monotone_p_finds_every_pivot_and_only_pivots(seed):
    rng = random.Random(seed)
    L = rng.randint(8, 48)
    jumps = {i: rng.choice([0.05, 0.1, 0.25, 0.3]) for i in rng.sample(range(L - 1), rng.randint(1, 3))}
    base = 1.0 - sum(jumps.values())  # ends at 1 (the solution succeeds: its last token is WIN)
    sol = [rng.randint(10, 99) for _ in range(L - 1)] + [WIN]
    lps = [-rng.random() * 3 for _ in range(L)]
    cfg = PTSConfig(samples_per_estimate=100, p_gap=0.2)  # p is then exact to 0.01
    pivots, stats = run_pivots(steps(L, base, jumps), sol, lps, cfg)
    true = sorted(i for i, j in jumps.items() if j >= 0.2)
    assert sorted(pv.position for pv in pivots) == true
    assert stats.estimates <= L  # memoised: never more than one estimate per prefix


def test_non_monotone_reports_only_real_pivots():
    # p rises at 3 then falls back at 9: the whole solution shows no change, Subdivide stops early
    # (the report's algorithm accepts this); whatever it reports must be a real pivot
    L = 12
    sol = list(range(10, 21)) + [WIN]
    p = steps(L, 0.7, {3: 0.3, 9: -0.3, 10: 0.3})
    pivots, _ = run_pivots(p, sol, [-1.0] * L, PTSConfig(samples_per_estimate=10))
    # equal log-probs split at the middle: (0, 12) -> (0, 6) finds 3; p(6) == p(12) == 1.0, so
    # (6, 12) stops there and the fall at 9 and rise at 10 go unseen
    assert [pv.position for pv in pivots] == [3]
    assert all(abs(p(pv.position + 1) - p(pv.position)) >= 0.2 for pv in pivots)


def test_pairs_from_rollouts_at_the_prefix():
    L = 8
    sol = list(range(10, 17)) + [WIN]
    cfg = PTSConfig(samples_per_estimate=20)
    search = PivotSearch(Scripted(steps(L, 0.6, {4: 0.4})), oracle, QUERY, cfg)

    async def go():
        [pv] = await search.pivots(sol, [-1.0] * L)
        return pv, pair_from_pivot(pv, sol, await search.estimate(sol[:pv.position]))

    pv, pair = asyncio.run(go())
    assert pair.prefix == sol[:4] and pair.chosen == sol[4] and pair.rejected == 8004
    assert (pair.p_chosen, pair.p_rejected) == (1.0, 0.0)

    # a token that sinks p: the failing solution's token is rejected, a succeeding alternative chosen
    bad = list(range(10, 17)) + [LOSE]
    search = PivotSearch(Scripted(steps(L, 0.5, {2: -0.5})), oracle, QUERY, cfg)

    async def go_bad():
        [pv] = await search.pivots(bad, [-1.0] * L)
        return pair_from_pivot(pv, bad, await search.estimate(bad[:pv.position]))

    pair = asyncio.run(go_bad())
    assert (pair.chosen, pair.rejected) == (7002, 12)


def test_search_query_filters_and_pairs():
    L = 8
    win = list(range(10, 17)) + [WIN]
    p = steps(L, 0.5, {3: 0.5})
    res = asyncio.run(search_query(Scripted(p, [win]), oracle, QUERY, PTSConfig(samples_per_estimate=4)))
    # root: 1 winner of 4 -> p = 0.25, kept; the failing rollout [8000, LOSE] is searched too
    assert res.kept and res.p_query == 0.25
    assert any(pr.chosen == 13 and pr.prefix == win[:3] for pr in res.pairs)
    assert res.samples == 4 * res.estimates
    too_easy = asyncio.run(search_query(Scripted(lambda k: 1.0, [win] * 4), oracle, QUERY, PTSConfig(samples_per_estimate=4)))
    assert not too_easy.kept and too_easy.pairs == [] and too_easy.estimates == 1


def test_split_point():
    assert split_point([-0.1, -0.1, -5.0, -0.1], 0, 4) == 3
    assert split_point([0.0] * 6, 0, 6) == 3  # no surprisal: the middle
    assert split_point([-9.0, -0.1], 0, 2) == 1  # both parts stay non-empty
    assert split_point([-1.0] * 10, 2, 10, "middle") == 6


def test_config_errors():
    with pytest.raises(ConfigError, match="p_gap"):
        PTSConfig(p_gap=0)
    with pytest.raises(ConfigError, match="p_min"):
        PTSConfig(p_min=0.9, p_max=0.1)
    with pytest.raises(ConfigError, match="split"):
        PTSConfig(split="random")


class Lucky(Scripted):
    """The first estimate at each prefix is a lucky draw (p(k) + `luck`, an estimate's noise); every
    later one there is exact, as fresh rollouts of a well-sampled estimate are."""

    def __init__(self, p_of_k, luck):
        super().__init__(lambda k: self._p(k))
        self.true_p, self.luck, self.seen = p_of_k, luck, set()

    def _p(self, k):
        first = k not in self.seen
        self.seen.add(k)
        return min(1.0, max(0.0, self.true_p(k) + (self.luck.get(k, 0.0) if first else 0.0)))


def test_confirmation_drops_a_pivot_that_was_sampling_noise_and_keeps_a_real_one():
    L = 16
    sol = list(range(10, 10 + L - 1)) + [WIN]
    lps = [-0.1] * L
    lps[5] = -5.0
    true_p = steps(L, 0.25, {5: 0.5})  # token 5 truly moves p from 0.25 to 0.75

    def search(luck, confirm):
        ps = PivotSearch(Lucky(true_p, luck), oracle, QUERY, PTSConfig(samples_per_estimate=20, p_gap=0.3,
                                                                      confirm_samples=confirm))
        return asyncio.run(ps.pivots(sol, lps)), ps.stats

    # the first estimate at prefix 5 comes out 0.5 too high: token 4 looks pivotal, token 5 not
    noisy, _ = search({5: 0.5}, 0)
    assert [pv.position for pv in noisy] == [4]
    kept, stats = search({5: 0.5}, 20)
    assert kept == [] and stats.unconfirmed == 1  # fresh rollouts around token 4 show no gap
    # without the noise the real pivot is found, and confirmation keeps it with its fresh p's
    real, stats = search({}, 20)
    assert [(pv.position, pv.p_before, pv.p_after) for pv in real] == [(5, 0.25, 0.75)] and stats.unconfirmed == 0
    with pytest.raises(ConfigError, match="confirm_samples"):
        PTSConfig(confirm_samples=1)
