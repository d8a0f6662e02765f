"""PTS throughput as PTS actors grow, against one Serve sampler fleet, in one run.

The same queries (planted-pivot oracle, as in benchmarks/pts_search.py) are searched with 1, 2
and 4 `PTSActor`s; each actor keeps `--concurrency` sampling calls in flight. More actors put more
requests in flight, which vLLM batches, until the replica is saturated. Printed: queries/s and
samples/s per actor count, and the ratio to one actor.

Run: .venv/bin/python benchmarks/pts_actors.py [--queries 8] [--samples 16] [--concurrency 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def planted(query, tok):
    k = 2 + int(query["id"][1:]) % 5
    return lambda ids: len(ids) > k and ids[k] % 2 == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--actors", default="1,2,4")
    args = ap.parse_args()

    import ray
    from ray import serve

    from actors.posttrain.pts import run_search
    from actors.serve.app import build_sampler_app, sampler_deployment_name, sampler_llm_config
    from actors.serve.names import APP_NAME
    from phi4ray.model.config import model_preset
    from phi4ray.model.decoder import build_model
    from phi4ray.model.hf import export_hf
    from phi4ray.model.phi4_tokenizer import phi4_tokenizer
    from phi4ray.posttrain.pts import PTSConfig

    ray.init(address="local", num_cpus=8, include_dashboard=False)
    with tempfile.TemporaryDirectory() as d:
        cfg = model_preset("tiny").replace(n_layers=2, tie_embeddings=False, embed_init_std=1.0)
        export_hf(build_model(cfg, seed=1234), Path(d) / "model", phi4_tokenizer())
        llm = sampler_llm_config(str(Path(d) / "model"), max_model_len=512)
        serve.run(build_sampler_app(llm), name=APP_NAME, route_prefix="/")
        deployment = sampler_deployment_name(llm)
        queries = [{"id": f"q{i}", "question": f"Tell me fact number {i}.", "answer": ""} for i in range(args.queries)]
        rows = []
        for n in [int(x) for x in args.actors.split(",")]:
            pts = PTSConfig(samples_per_estimate=args.samples, p_gap=0.35, max_tokens=16, actors=n,
                            concurrency=args.concurrency)
            out = Path(d) / f"actors{n}"
            out.mkdir()
            t0 = time.perf_counter()
            res = run_search(queries, out, deployment, APP_NAME, pts, "tiny", oracle_for=planted)
            wall = time.perf_counter() - t0
            rows.append((n, wall, sum(r["samples"] for r in res), sum(r["pivots"] for r in res)))
        serve.shutdown()
    ray.shutdown()
    print(f"{args.queries} queries, {args.samples} rollouts per estimate, {args.concurrency} calls in flight per actor")
    print(f"{'actors':>6} {'wall s':>7} {'queries/s':>10} {'samples/s':>10} {'pivots':>7} {'speed-up':>9}")
    for n, wall, samples, pivots in rows:
        print(f"{n:>6} {wall:>7.1f} {args.queries / wall:>10.2f} {samples / wall:>10.1f} {pivots:>7} "
              f"{rows[0][1] / wall:>8.2f}x")


if __name__ == "__main__":
    main()
