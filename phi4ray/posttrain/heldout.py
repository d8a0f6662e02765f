"""What PTS and DPO are for, measured: p(success) on held-out queries, before and after DPO.

The held-out queries are `dpo.heldout_queries` (a query file, as `pts.queries_file`), or the toy
domain's held-out questions. Each is rendered as PTS renders it (the model's own chat template),
sampled `samples` times at `pts.temperature` from our own model (plain torch with a KV cache,
phi4ray.model.sample) and graded by the PTS oracle. The figure is the mean of the per-query
success rates, with a 95% interval over queries (the queries are the sample; a query's own
`samples` only make its rate less noisy).
"""
from __future__ import annotations

import math
from pathlib import Path

from phi4ray.posttrain.queries import load_query_file, query_oracle, toy_queries


def heldout_queries(cfg, out_dir: Path) -> list[dict]:
    """The run's held-out queries (cfg: the RunConfig); a query file's bad rows go to
    out_dir/heldout_quarantine.jsonl."""
    d = cfg.dpo
    if d.heldout_queries:
        queries, _ = load_query_file(d.heldout_queries, cfg.pts.queries_kind, d.heldout_size,
                                     out_dir / "heldout_quarantine.jsonl")
        return queries
    return toy_queries(cfg.sft.heldout, cfg.seed, cfg.arith, split="test")


def interval95(rates: list[float]) -> float:
    """Half-width of the normal 95% interval of the mean of `rates`."""
    n = len(rates)
    if n < 2:
        return float("nan")
    mean = sum(rates) / n
    var = sum((r - mean) ** 2 for r in rates) / (n - 1)
    return 1.96 * math.sqrt(var / n)


def paired_change(before: dict, after: dict) -> tuple[float, float]:
    """(mean, 95% half-width) of after - before per query: the same queries measured twice, so the
    query-to-query spread that widens each figure's own interval cancels."""
    diffs = [after["per_query"][k] - v for k, v in before["per_query"].items() if k in after["per_query"]]
    return sum(diffs) / max(1, len(diffs)), interval95(diffs)


def success_on_queries(model_dir: str | Path, queries: list[dict], samples: int, max_tokens: int,
                       temperature: float, seed: int = 0, device: str = "cpu", batch: int = 64) -> dict:
    """{"success", "success_ci95", "queries", "per_query"} of the model in `model_dir`. Runs where
    it is called: the dpo stage calls it on a Ray worker (actors/run/off_driver.py)."""
    import torch  # deferred: the stage's driver never loads torch for this

    from phi4ray.model.hf import import_hf  # with torch, for the same reason
    from phi4ray.model.sample import sample
    from phi4ray.model.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    model = import_hf(model_dir, device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    jobs = [(i, tok.render_prompt(q["question"])) for i, q in enumerate(queries) for _ in range(samples)]
    oracles = [query_oracle(q, tok) for q in queries]
    wins = [0] * len(queries)
    for start in range(0, len(jobs), batch):
        chunk = jobs[start:start + batch]
        outs = sample(model, [ids for _, ids in chunk], max_tokens, temperature, gen, tok.end_turn_id)
        for (i, _), out in zip(chunk, outs):
            wins[i] += oracles[i](out)
    rates = [w / samples for w in wins]
    return {"success": sum(rates) / max(1, len(rates)), "success_ci95": interval95(rates), "queries": len(rates),
            "per_query": {q["id"]: r for q, r in zip(queries, rates)}}
