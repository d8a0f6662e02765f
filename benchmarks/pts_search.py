"""Pivotal Token Search vs a naive search, in one run on the same model, queries and oracle.

PTS (phi4ray.pts): Subdivide at the cumulative log-prob midpoint, p memoised per prefix, prefixes
sent as the exact sampled token ids. Naive: split at the middle token, no memo, prefixes decoded
to text and re-encoded (what a text-level pipeline does; the tokens can change). Both sample from
the same real vLLM engine (offline `LLM`, token-id prompts).

The oracle plants one pivot per query: a solution succeeds iff its token at position k (k differs
per query) has an even id. The tiny random model samples near-uniformly, so p(Q) ~ 0.5 and the
only true pivot is at k. Printed: samples drawn, pivots found (and how many are the planted
one), samples per pivot, wall time, and the naive / PTS ratio (goal: >= 5x fewer samples per
pivot). A sample is one sampled continuation.

Run: .venv/bin/python benchmarks/pts_search.py [--queries 12] [--samples 32] [--max-tokens 24]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


class OfflineSampler:
    """phi4ray.sampling.Sampler over an offline vLLM engine (one call at a time: both searches
    pay the same per-call cost, so wall times compare)."""

    def __init__(self, llm):
        self.llm = llm

    async def sample(self, req):
        from vllm import SamplingParams

        from phi4ray.sampling import Sample

        params = SamplingParams(n=req.n, max_tokens=req.max_tokens, temperature=req.temperature, logprobs=0,
                                detokenize=False, stop_token_ids=req.stop_ids or None)
        out = self.llm.generate([{"prompt_token_ids": req.prompt_ids}], params, use_tqdm=False)[0]
        return [Sample(list(c.token_ids), [float(lp[t].logprob) for t, lp in zip(c.token_ids, c.logprobs)],
                       c.finish_reason or "length") for c in out.outputs]


def planted(k: int):
    return lambda ids: len(ids) > k and ids[k] % 2 == 0


async def search_all(sampler, queries, cfg, prefix_ids=None):
    from phi4ray.pts import search_query

    t0 = time.perf_counter()
    results = [await search_query(sampler, planted(k), q, cfg, prefix_ids=prefix_ids) for q, k in queries]
    wall = time.perf_counter() - t0
    samples = sum(r.samples for r in results)
    pivots = sum(r.pivots for r in results)
    exact = sum(sum(p.position == k for p in r.pairs) for r, (_, k) in zip(results, queries))
    return {"kept": sum(r.kept for r in results), "samples": samples, "pivots": pivots,
            "pairs_at_planted_pivot": exact, "samples_per_pivot": samples / pivots if pivots else float("inf"),
            "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=12)
    ap.add_argument("--samples", type=int, default=32, help="rollouts per p estimate")
    ap.add_argument("--max-tokens", type=int, default=24)
    args = ap.parse_args()

    from vllm import LLM

    from phi4ray.config import model_preset
    from phi4ray.hf import export_hf
    from phi4ray.model import build_model
    from phi4ray.pts import PTSConfig
    from phi4ray.tokenizer import get_tokenizer

    tok = get_tokenizer()
    with tempfile.TemporaryDirectory() as d:
        # unit-std embeddings: near-uniform sampling, so the planted pivot is the only one
        cfg = model_preset("tiny").replace(n_layers=2, tie_embeddings=False, embed_init_std=1.0)
        export_hf(build_model(cfg, seed=1234), d)
        llm = LLM(d, dtype="float32", enforce_eager=True, max_model_len=512, enable_prefix_caching=True, seed=0)
        sampler = OfflineSampler(llm)
        queries = [(tok.render_chat([{"role": "user", "content": f"Tell me fact number {i}."}],
                                    add_generation_prompt=True).ids, 2 + (5 * i) % (args.max_tokens - 4))
                   for i in range(args.queries)]
        base = dict(samples_per_estimate=args.samples, p_gap=0.35, max_tokens=args.max_tokens, solutions_per_query=2)
        pts = asyncio.run(search_all(sampler, queries, PTSConfig(**base)))
        naive = asyncio.run(search_all(sampler, queries, PTSConfig(**base, split="middle", memo=False),
                                       prefix_ids=lambda ids: tok.encode(tok.decode(ids))))
        llm.llm_engine.engine_core.shutdown()
    print(f"{args.queries} queries, {args.samples} rollouts per estimate, solutions of {args.max_tokens} tokens, "
          f"one planted pivot each")
    print(f"{'search':>8} {'kept':>5} {'samples':>8} {'pivots':>7} {'at planted':>10} {'samples/pivot':>14} {'wall s':>7}")
    for name, r in (("PTS", pts), ("naive", naive)):
        print(f"{name:>8} {r['kept']:>5} {r['samples']:>8} {r['pivots']:>7} {r['pairs_at_planted_pivot']:>10} "
              f"{r['samples_per_pivot']:>14.1f} {r['wall_s']:>7.1f}")
    print(f"samples per pivot, naive / PTS: {naive['samples_per_pivot'] / pts['samples_per_pivot']:.2f}x "
          f"(goal >= 5x); wall time naive / PTS: {naive['wall_s'] / pts['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
