"""Pivotal Token Search vs a naive search, in one run on the same model, queries and oracle.

PTS (phi4ray.posttrain.pts): Subdivide at the cumulative log-prob midpoint, p memoised per prefix, prefixes
sent as the exact sampled token ids. Naive: split at the middle token, no memo, prefixes decoded
to text and re-encoded (what a text-level pipeline does; the tokens can change). Both sample from
the same real vLLM engine (offline `LLM`, token-id prompts).

The oracle plants one pivot per query: a solution succeeds iff its token at position k (k differs
per query) has an even id. The tiny random model samples near-uniformly, so p(Q) ~ 0.5 and the
only true pivot is at k. Printed: samples drawn, pivots found (and how many are the planted
one), samples per pivot, wall time, and the naive / PTS ratio (goal: >= 5x fewer samples per
pivot). A sample is one sampled continuation.

With --run-dir RUN (a finished `phi4ray run`): no planted pivot. The model is RUN/models/sft, the
queries are the ones its own pts stage kept (RUN/pts/queries.jsonl; questions rebuilt from the
stage's recorded config), the oracle is the stage's. Also printed there: precision, the share of
found pivots whose |p(after) - p(before)| >= p_gap when both are re-estimated with --verify fresh
rollouts each (a pivot that was sampling noise fails it).

Run: .venv/bin/python benchmarks/pts_search.py [--queries 12] [--samples 32] [--max-tokens 24]
     .venv/bin/python benchmarks/pts_search.py --run-dir RUN [--queries 12] [--verify 64]
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")



class OfflineSampler:
    """phi4ray.serve.sampling.Sampler over an offline vLLM engine. Requests made while the engine
    is busy wait and go together in the next `generate` call (as the fleet's engines batch
    concurrent requests); both searches get the same batching, so their wall times compare."""

    def __init__(self, llm):
        self.llm, self.pending, self.worker = llm, [], None

    async def sample(self, req):
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((req, fut))
        if self.worker is None:
            self.worker = asyncio.ensure_future(self._drain())
        return await fut

    async def _drain(self):
        from vllm import SamplingParams

        from phi4ray.serve.sampling import Sample

        while self.pending:
            seen = -1
            while seen != len(self.pending):  # let every runnable search reach its next request
                seen = len(self.pending)
                for _ in range(8):
                    await asyncio.sleep(0)
            batch, self.pending = self.pending, []
            params = [SamplingParams(n=r.n, max_tokens=r.max_tokens, temperature=r.temperature, logprobs=0,
                                     detokenize=False, stop_token_ids=r.stop_ids or None) for r, _ in batch]
            outs = self.llm.generate([{"prompt_token_ids": r.prompt_ids} for r, _ in batch], params, use_tqdm=False)
            for (_, fut), out in zip(batch, outs):
                fut.set_result([Sample(list(c.token_ids),
                                       [float(lp[t].logprob) for t, lp in zip(c.token_ids, c.logprobs)],
                                       c.finish_reason or "length") for c in out.outputs])
        self.worker = None


def planted(k: int):
    return lambda ids: len(ids) > k and ids[k] % 2 == 0


async def verify(sampler, oracle, query_ids, pair, cfg, n: int, stop_ids) -> bool:
    """Re-estimate p before and after the pivot token with n fresh rollouts each: the gap must hold
    (>= p_gap, same direction). After an end-of-turn token the answer is complete: judged, not sampled."""
    from phi4ray.posttrain.pts import PivotSearch

    raises = pair.p_after > pair.p_before
    token = pair.chosen if raises else pair.rejected  # the token the search found
    fresh = PivotSearch(sampler, oracle, query_ids, dataclasses.replace(cfg, samples_per_estimate=n, memo=False),
                        stop_ids=stop_ids)
    after_prefix = pair.prefix + [token]
    if token in stop_ids:
        before, p_after = await fresh.estimate(pair.prefix), float(oracle(after_prefix))
    else:
        before, after = await asyncio.gather(fresh.estimate(pair.prefix), fresh.estimate(after_prefix))
        p_after = after.p
    return abs(p_after - before.p) >= cfg.p_gap and (p_after > before.p) == raises


async def search_all(sampler, queries, cfg, stop_ids, prefix_ids=None, verify_n: int = 0):
    """queries: (query ids, oracle, planted position or None), searched concurrently."""
    from phi4ray.posttrain.pts import search_query

    t0 = time.perf_counter()
    results = await asyncio.gather(*(search_query(sampler, oracle, q, cfg, stop_ids=stop_ids, prefix_ids=prefix_ids)
                                     for q, oracle, _ in queries))
    wall = time.perf_counter() - t0
    samples = sum(r.samples for r in results)
    pivots = sum(r.pivots for r in results)
    out = {"kept": sum(r.kept for r in results), "samples": samples, "pivots": pivots,
           "unconfirmed": sum(r.unconfirmed for r in results),
           "samples_per_pivot": samples / pivots if pivots else float("inf"), "wall_s": wall}
    if all(k is not None for _, _, k in queries):
        out["pairs_at_planted_pivot"] = sum(sum(p.position == k for p in r.pairs) for r, (_, _, k) in zip(results, queries))
    if verify_n:
        checked = await asyncio.gather(*(verify(sampler, oracle, q, pair, cfg, verify_n, stop_ids)
                                         for r, (q, oracle, _) in zip(results, queries) for pair in r.pairs))
        out["verified"], out["precision"] = len(checked), sum(checked) / len(checked) if checked else float("nan")
    return out


def run_queries(run_dir: Path, n: int):
    """The queries the run's own pts stage kept, with their oracles, and its PTS config."""
    from phi4ray.model.tokenizer import load_tokenizer
    from phi4ray.posttrain.pts import PTSConfig
    from phi4ray.posttrain.queries import pts_queries, query_oracle
    from phi4ray.toy.arith import ArithConfig

    conf = json.loads((run_dir / "manifests" / "pts.json").read_text())["config"]
    cfg = SimpleNamespace(seed=conf["seed"], arith=ArithConfig(**conf["arith"]),
                          pts=PTSConfig(**{k: v for k, v in conf["pts"].items() if k in PTSConfig.__dataclass_fields__}))
    with tempfile.TemporaryDirectory() as d:
        queries = {q["id"]: q for q in pts_queries(cfg, Path(d))[0]}
    kept = [r["query_id"] for r in map(json.loads, (run_dir / "pts" / "queries.jsonl").read_text().splitlines())
            if r["kept"]][:n]
    tok = load_tokenizer(run_dir / "models" / "sft")  # the searched model's
    return [(tok.render_prompt(queries[i]["question"]), query_oracle(queries[i], tok), None) for i in kept], cfg.pts, tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=12)
    ap.add_argument("--samples", type=int, default=32, help="rollouts per p estimate (planted mode)")
    ap.add_argument("--max-tokens", type=int, default=24, help="solution length (planted mode)")
    ap.add_argument("--run-dir", type=Path, help="a finished run: its SFT model and its own kept queries")
    ap.add_argument("--verify", type=int, default=64, help="fresh rollouts per re-estimate (--run-dir)")
    ap.add_argument("--confirm", type=int, help="pts.confirm_samples for both searches (--run-dir: default the run's)")
    args = ap.parse_args()

    from vllm import LLM

    from phi4ray.model.config import model_preset
    from phi4ray.model.decoder import build_model
    from phi4ray.model.hf import export_hf
    from phi4ray.model.phi4_tokenizer import phi4_tokenizer
    from phi4ray.posttrain.pts import PTSConfig

    tok = phi4_tokenizer()
    with tempfile.TemporaryDirectory() as d:
        if args.run_dir:
            model, verify_n = str(args.run_dir / "models" / "sft"), args.verify
            queries, cfg, tok = run_queries(args.run_dir, args.queries)
            what = f"{len(queries)} queries kept by {args.run_dir}'s pts stage, its SFT model and oracle"
        else:
            # unit-std embeddings: near-uniform sampling, so the planted pivot is the only one
            mcfg = model_preset("tiny").replace(n_layers=2, tie_embeddings=False, embed_init_std=1.0)
            model, verify_n = export_hf(build_model(mcfg, seed=1234), d, phi4_tokenizer()), 0
            queries = [(tok.render_chat([{"role": "user", "content": f"Tell me fact number {i}."}],
                                        add_generation_prompt=True).ids, planted(k), k)
                       for i, k in ((i, 2 + (5 * i) % (args.max_tokens - 4)) for i in range(args.queries))]
            cfg = PTSConfig(samples_per_estimate=args.samples, p_gap=0.35, max_tokens=args.max_tokens,
                            solutions_per_query=2)
            what = f"{args.queries} queries, one planted pivot each"
        if args.confirm is not None:
            cfg = dataclasses.replace(cfg, confirm_samples=args.confirm)
        stop_ids = (tok.end_turn_id,)
        llm = LLM(str(model), dtype="float32", enforce_eager=True, max_model_len=512, enable_prefix_caching=True, seed=0)
        sampler = OfflineSampler(llm)
        pts = asyncio.run(search_all(sampler, queries, cfg, stop_ids, verify_n=verify_n))
        naive = asyncio.run(search_all(sampler, queries, dataclasses.replace(cfg, split="middle", memo=False), stop_ids,
                                       prefix_ids=lambda ids: tok.encode(tok.decode(ids)), verify_n=verify_n))
        llm.llm_engine.engine_core.shutdown()
    print(f"{what}; {cfg.samples_per_estimate} rollouts per estimate, p_gap {cfg.p_gap}, "
          f"solutions of <= {cfg.max_tokens} tokens, {cfg.confirm_samples} confirming rollouts per side"
          + (f", {verify_n} per side to verify" if verify_n else ""))
    cols = ["kept", "samples", "pivots", "unconfirmed", "samples_per_pivot", "pairs_at_planted_pivot", "verified",
            "precision", "wall_s"]
    cols = [c for c in cols if c in pts]
    print(f"{'search':>8} " + " ".join(f"{c:>{max(8, len(c))}}" for c in cols))
    for name, r in (("PTS", pts), ("naive", naive)):
        print(f"{name:>8} " + " ".join(f"{r[c]:>{max(8, len(c))}.{2 if isinstance(r[c], float) else 0}f}"
                                       if isinstance(r[c], float) else f"{r[c]:>{max(8, len(c))}}" for c in cols))
    print(f"samples per pivot, naive / PTS: {naive['samples_per_pivot'] / pts['samples_per_pivot']:.2f}x "
          f"(goal >= 5x); wall time naive / PTS: {naive['wall_s'] / pts['wall_s']:.2f}x"
          + (f"; precision PTS {pts['precision']:.2f} vs naive {naive['precision']:.2f}" if verify_n else ""))


if __name__ == "__main__":
    main()
