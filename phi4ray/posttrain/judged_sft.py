"""SFT best-of-N: N responses per prompt from a policy, the judge's best kept as a conversation.

The policy and judge are the same kinds phi4ray.posttrain.judged_pairs takes (the Serve fleet's in
actors/posttrain/judge.py, an endpoint's in phi4ray.posttrain.judge_endpoint, scripted fakes in tests); the run is
resumable through the same per-prompt checkpoint (`<out>.results.jsonl`).
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from phi4ray.posttrain.judge import JUDGE_TEMPLATE, Template, best_of_n, overall, score_candidates, shortfall_reason
from phi4ray.posttrain.judged_pairs import aclose_all, candidate_record, policies_tokenizer, run_resumable


async def abest_of_n_sft(prompts: list[dict], policy, judge, n: int, out_path, concurrency: int = 8, *,
                         oracle=None, keep_truncated: bool = False, min_score: float | None = None,
                         template: Template = JUDGE_TEMPLATE) -> dict:
    """`best_of_n_sft` inside a running event loop."""
    out_path = Path(out_path)
    base = out_path.with_suffix("")
    tok = policies_tokenizer([policy])

    async def work(q: dict) -> dict:
        cands = await policy.respond(tok.render_prompt(q["question"]), q["question"], n)
        calls = await score_candidates(judge, q["question"], cands, reference=q.get("answer"), oracle=oracle,
                                       keep_truncated=keep_truncated, template=template)
        best = best_of_n([c.scores if c.eligible else None for c in cands])
        r = {"query_id": q["id"], "status": "kept", "reason": None, "judge_calls": calls,
             "parse_failures": sum(c.reason == "unparseable" for c in cands), "template_id": template.id,
             "candidates": [candidate_record(c) for c in cands]}
        if best is None:
            r.update(status="skipped", reason=shortfall_reason(cands))
        elif cands[best].correct is False:  # the oracle knows better than the judge: never teach a wrong answer
            r.update(status="skipped", reason="incorrect")
        elif min_score is not None and overall(cands[best].scores) < min_score:
            r.update(status="skipped", reason="below_min_score")
        else:
            c = cands[best]
            r["row"] = {"messages": [{"role": "user", "content": q["question"]},
                                     {"role": "assistant", "content": c.text}],
                        "query_id": q["id"], "score": overall(c.scores), "scores": c.scores,
                        "model_id": c.model_id, "template_id": template.id}
        return r

    t0 = time.time()
    try:
        results = await run_resumable(prompts, work, Path(f"{base}.results.jsonl"), concurrency, template.id)
    finally:
        await aclose_all(judge, policy)
    kept = [r["row"] for r in results if r["status"] == "kept"]
    out_path.write_text("".join(json.dumps(row) + "\n" for row in kept))
    skipped: dict[str, int] = {}
    for r in results:
        if r["status"] != "kept":
            skipped[r["reason"]] = skipped.get(r["reason"], 0) + 1
    report = {"template_id": template.id, "n": n, "prompts_in": len(results), "kept": len(kept),
              "skipped": skipped, "judge_calls": sum(r.get("judge_calls", 0) for r in results),
              "parse_failures": sum(r.get("parse_failures", 0) for r in results), "wall_s": round(time.time() - t0, 2)}
    Path(f"{base}.skipped.jsonl").write_text("".join(
        json.dumps({"query_id": r["query_id"], "reason": r["reason"], "detail": r.get("detail")}) + "\n"
        for r in results if r["status"] != "kept"))
    Path(f"{base}.report.json").write_text(json.dumps(report, indent=2))
    return report


def best_of_n_sft(prompts: list[dict], policy, judge, n: int, out_path, concurrency: int = 8, **kw) -> dict:
    """N responses per prompt from `policy`, the judge's best kept as an SFT conversation:
    out_path is JSONL of {"messages": [user, assistant], "query_id", "score", ...} (what
    phi4ray.train.sft.read_conversations reads); `<out>.skipped.jsonl` names every prompt left out and
    why, `<out>.report.json` the counts. Resumable through `<out>.results.jsonl`."""
    return asyncio.run(abest_of_n_sft(prompts, policy, judge, n, out_path, concurrency, **kw))
