"""PTS end to end on the real sampler fleet (Ray Serve + vLLM), with a planted pivot: success is
decided by the parity of the third sampled token, so p(success | prefix) is ~0.5 before it and
exactly 0 or 1 after it. PTS must find that token and nothing else, through real PTS actors."""
from __future__ import annotations

import json

import pytest

from actors.posttrain.pts import run_search
from phi4ray.model.phi4_tokenizer import phi4_tokenizer
from phi4ray.posttrain.pts import PTSConfig, search_report

pytestmark = [pytest.mark.ray, pytest.mark.vllm]
PIVOT = 2


def third_token_is_even(query, tok):
    def oracle(ids):
        return len(ids) > PIVOT and ids[PIVOT] % 2 == 0
    return oracle


def test_pts_actors_find_the_planted_pivot(sampler_app, tmp_path):
    # 64 rollouts per estimate and p_gap 0.35: sampling noise alone (sd ~0.09 per difference)
    # essentially never fakes a pivot, while the planted one moves p by ~0.5
    cfg = PTSConfig(samples_per_estimate=64, p_gap=0.35, max_tokens=6, solutions_per_query=2, actors=2, concurrency=4)
    queries = [{"id": f"q{i}", "question": f"Say something about {w}.", "answer": ""}
               for i, w in enumerate(["cats", "rivers", "tea"])]
    results = run_search(queries, tmp_path, sampler_app["deployment"], sampler_app["app"], cfg, "tiny",
                         oracle_for=third_token_is_even)
    assert [r["query_id"] for r in results] == ["q0", "q1", "q2"]
    rep = search_report(results, cfg)
    assert rep["queries"] == rep["kept"] + rep["too_easy"] + rep["too_hard"] == 3
    assert rep["kept"] >= 2  # the tiny model samples near-uniformly: p(Q) ~ 0.5
    pairs = [p for r in results for p in r["pairs"]]
    assert pairs and all(p["position"] == PIVOT for p in pairs)
    tok = phi4_tokenizer()
    rendered = {q["id"]: tok.render_chat([{"role": "user", "content": q["question"]}], add_generation_prompt=True).ids
                for q in queries}
    for p in pairs:
        assert p["chosen_ids"][0] % 2 == 0 and p["rejected_ids"][0] % 2 == 1
        # the prompt is the rendered query, then exactly the 2 sampled tokens before the pivot
        q_ids = rendered[p["query_id"]]
        assert p["prompt_ids"][:len(q_ids)] == q_ids and len(p["prompt_ids"]) == len(q_ids) + PIVOT
        assert p["prompt_text"] == tok.decode(p["prompt_ids"]) and p["chosen_text"] == tok.decode(p["chosen_ids"])
        assert p["p_chosen"] > p["p_rejected"]
    assert rep["samples"] == 64 * rep["p_estimates"]
    # resumable per query: a rerun finds all three done and samples nothing
    lines = (tmp_path / "queries.jsonl").read_text().splitlines()
    again = run_search(queries, tmp_path, sampler_app["deployment"], sampler_app["app"], cfg, "tiny",
                       oracle_for=third_token_is_even)
    assert again == sorted((json.loads(x) for x in lines), key=lambda r: r["query_id"])  # file: finish order
    assert (tmp_path / "queries.jsonl").read_text().splitlines() == lines
