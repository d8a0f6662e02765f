"""The pts stage on a user's query file of every kind (math, choice, code), through the real Ray
Serve + vLLM fleet and the real oracles (math_equal, the letter, the tests in the sandbox).

The served model is planted (tests/chain_model.py): it always writes

    ```python\\nx = {4|5} \\n```\\nThe answer is ({A|B}). \\boxed{{6|7}}

with a fair coin at each brace, whatever the question. Each kind's verdict hangs on one coin (the
code's tests want x == 4, the choice wants A, the math wants 6), so every query has p ~ 0.5 and
exactly one pivotal token, at a position known in advance, with p after it exactly 0 or 1."""
from __future__ import annotations

import dataclasses
import functools
import json

import pytest

from phi4ray.model.hf import export_hf
from phi4ray.model.phi4_tokenizer import phi4_tokenizer
from phi4ray.posttrain.queries import load_query_file
from phi4ray.presets import run_preset
from phi4ray.run import manifest
from phi4ray.run.stage import run_stage
from tests.chain_model import chain_model, text_chain

# slow tier: ~100 s of sandboxed code verdicts on 2 cores; the default tier's PTS-on-the-fleet test is
# tests/test_pts_fleet.py (the planted pivot), its oracles' tests are tests/test_pts.py
pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

PIECES = ["```python\nx = ", ("4", "5"), " \n```\nThe answer is (", ("A", "B"), "). \\boxed{", ("6", "7"), "}"]
QUERIES = [  # (row, the coin that decides it, the winning side)
    ({"question": "Ann has 2 pens and gets 4 more. How many pens?", "answer": "2 + 4 = 6\n#### 6"}, 2, 0),
    ({"id": "c1", "kind": "choice", "prompt": "Which is even?\n(A) 4\n(B) 5", "reference": "A"}, 1, 0),
    ({"id": "k1", "kind": "code", "prompt": "Set x to 4.", "tests": "assert x == 4"}, 0, 0),
]
BAD = [json.dumps({"id": "c2", "kind": "choice", "prompt": "p", "reference": "E"}), "not json"]


def test_pts_stage_on_a_file_of_every_kind(ray_cluster, tmp_path):
    from actors.context import RunContext
    from actors.posttrain import pts

    tok = phi4_tokenizer()
    gen_prompt_end = tok.render_chat([{"role": "user", "content": "q"}], add_generation_prompt=True).ids[-1]
    succ, coins = text_chain(gen_prompt_end, PIECES)
    run = tmp_path / "run"
    export_hf(chain_model(succ), run / "models" / "sft", phi4_tokenizer())
    manifest.write_manifest(run, "sft", {}, key="planted", inputs={}, outputs={}, counts={}, timings={})
    qfile = tmp_path / "queries.jsonl"
    qfile.write_text("\n".join([json.dumps(q) for q, _, _ in QUERIES] + BAD) + "\n")

    cfg = run_preset("tiny")
    # 48 rollouts per estimate and p_gap 0.35: noise between two p ~ 0.5 estimates (sd ~0.1)
    # essentially never fakes a pivot, while each planted coin moves p by 0.5
    cfg = dataclasses.replace(cfg, pts=dataclasses.replace(
        cfg.pts, queries_file=str(qfile), samples_per_estimate=48, p_gap=0.35, max_tokens=24, actors=2, concurrency=8),
        dpo=dataclasses.replace(cfg.dpo, judge_prompts=0))
    with RunContext.local(run, cfg) as ctx:
        # an app of its own: under the default name the stage would replace the session's sampler
        # fleet (tests/conftest.py sampler_app) with the planted model, then delete it on close
        ctx.fleet.start = functools.partial(ctx.fleet.start, app="phi4ray-pts-kinds-test")
        done, ran = run_stage(pts.STAGE, ctx)
    assert ran
    report = json.loads((run / "pts" / "report.json").read_text())
    assert report["input"] == {"read": 5, "used": 3, "quarantined": 2, "by_kind": {"math": 1, "choice": 1, "code": 1}}
    assert done["counts"]["by_kind"] == report["by_kind"]
    bad = [json.loads(x) for x in (run / "pts" / "quarantine.jsonl").read_text().splitlines()]
    assert [b["where"] for b in bad] == [f"{qfile}:4", f"{qfile}:5"]
    assert "reference='E'" in bad[0]["reason"] and "invalid JSON" in bad[1]["reason"]
    for kind in ("math", "choice", "code"):
        k = report["by_kind"][kind]
        assert k["queries"] == k["kept"] == 1 and k["pairs"] >= 1, (kind, k)

    records = {r["query_id"]: r for r in map(json.loads, (run / "pts" / "queries.jsonl").read_text().splitlines())}
    queries = load_query_file(str(qfile), "math", 10, tmp_path / "bad.jsonl")[0]
    for q, (_, coin, win) in zip(queries, QUERIES):
        r = records[q["id"]]
        assert r["kind"] == q["kind"] and 0.2 <= r["p_query"] <= 0.8 and r["pairs"]
        q_ids = tok.render_chat([{"role": "user", "content": q["question"]}], add_generation_prompt=True).ids
        at, sides = coins[coin]["position"], coins[coin]["tokens"]
        for p in r["pairs"]:
            # the prompt is the rendered query, then exactly the sampled tokens before the pivot,
            # each the chain's successor of the one before
            assert p["prompt_ids"][:len(q_ids)] == q_ids and len(p["prompt_ids"]) == len(q_ids) + at == len(q_ids) + p["position"]
            prefix = [gen_prompt_end, *p["prompt_ids"][len(q_ids):]]
            assert all(b in succ[a] for a, b in zip(prefix, prefix[1:]))
            assert p["chosen_ids"] == [sides[win]] and p["rejected_ids"] == [sides[1 - win]]
            assert p["p_after"] in (0.0, 1.0) and abs(p["p_after"] - p["p_before"]) >= 0.35
            assert (p["p_chosen"], p["p_rejected"]) == (1.0, 0.0)
