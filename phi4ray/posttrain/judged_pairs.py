"""DPO round 2's judged pairs, and the resumable per-prompt driver judge-guided data runs on.

Responses come from several "policies" (anything with `async respond(prompt_ids, question, n)
-> list[Candidate]`: the Serve sampler fleet in actors/posttrain/judge.py, an external endpoint in
phi4ray.posttrain.judge_endpoint, a scripted fake in tests); the judge is any async callable
`judge(prompt_text) -> str`. All of this is waiting on models, so one asyncio loop drives it (in
the driver or in any actor): a semaphore bounds the prompts in flight (each prompt's policy and
judge calls run concurrently).

Outputs of `build_judged_pairs(prompts, policies, judge, out_dir)`:
- out_dir/pairs.parquet: `pair_schema()`, token ids for the DPO trainer plus readable texts,
  judge scores and the template id;
- out_dir/no_pair.jsonl: {"query_id", "reason", "detail"} for every prompt without a pair;
- out_dir/report.json: counts (prompts_in == pairs + sum(no_pair)), acceptance rate, judge parse
  failures, position inconsistencies;
- out_dir/results.jsonl: the checkpoint, one line per finished prompt (candidates with their ids,
  scores and judge outputs). A rerun skips the query ids in it; prompts that failed with an
  error (endpoint down, prompt over the context) are reported but not checkpointed, so a rerun
  retries them.

Prompts are dicts {"id": str, "question": str, "answer": optional reference for the oracle}.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from phi4ray.model.tokenizer import tokenizer_for
from phi4ray.posttrain.judge import JUDGE_TEMPLATE, NO_PAIR_REASONS, Candidate, Template, judge_prompt
from phi4ray.run.manifest import read_checkpoint_lines

log = logging.getLogger("phi4ray.posttrain.judge")


# --- resumable per-prompt driver ------------------------------------------------------------------
def _load_checkpoint(path: Path, template_id: str) -> dict[str, dict]:
    # judged under another template: judge it again
    return read_checkpoint_lines(path, keep=lambda r: r.get("template_id") == template_id)


def _ends_with_newline(path: Path) -> bool:
    if path.stat().st_size == 0:
        return True
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


async def run_resumable(prompts: list[dict], work, ckpt: Path, concurrency: int, template_id: str) -> list[dict]:
    """`work(prompt) -> result dict` for every prompt not in `ckpt` (under this judge template), at
    most `concurrency` at a time; each finished result is appended to `ckpt` at once (a later
    line for a query supersedes an earlier one). Returns results in prompt order."""
    ids = [p["id"] for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError("prompt ids must be unique: the checkpoint and the counts are keyed by them")
    if concurrency < 1:
        raise ValueError(f"concurrency={concurrency} must be >= 1")
    done = _load_checkpoint(ckpt, template_id)
    todo = [p for p in prompts if p["id"] not in done]
    sem = asyncio.Semaphore(concurrency)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with open(ckpt, "a") as f:
        if not _ends_with_newline(ckpt):
            f.write("\n")  # a crash cut the last line: start a fresh one rather than glue onto it
        async def one(p: dict) -> None:
            async with sem:
                try:
                    r = await work(p)
                except Exception as e:  # recorded for this run's counts; not checkpointed, so retried
                    log.warning("prompt %s failed: %s: %s", p["id"], type(e).__name__, e)
                    r = {"query_id": p["id"], "status": "error", "reason": "error",
                         "detail": f"{type(e).__name__}: {e}"[:500]}
            if r["status"] != "error":
                f.write(json.dumps(r) + "\n")
                f.flush()
            done[p["id"]] = r
        await asyncio.gather(*(one(p) for p in todo))
    return [done[i] for i in ids]


async def aclose_all(*objs) -> None:
    """`await o.aclose()` for each of `objs` that has one (endpoint clients)."""
    for o in objs:
        if hasattr(o, "aclose"):
            await o.aclose()


async def _respond_all(policies: list, prompt_ids: list[int], question: str, n: int | None = None) -> list[Candidate]:
    per_policy = await asyncio.gather(*(p.respond(prompt_ids, question, n) for p in policies))
    return [c for cands in per_policy for c in cands]


def candidate_record(c: Candidate) -> dict:
    """A judged candidate as its checkpoint record (judge output capped at 2000 characters)."""
    return {"model_id": c.model_id, "ids": c.ids, "text": c.text, "finish_reason": c.finish_reason,
            "scores": c.scores, "correct": c.correct, "reason": c.reason,
            "judge_output": None if c.judge_output is None else c.judge_output[:2000]}


# --- DPO round 2: judged pairs --------------------------------------------------------------------
_SCORE_COLS = [f"{side}_{c}" for side in ("chosen", "rejected") for c in ("accuracy", "style", "detail")]


def pair_schema():
    ids = pa.list_(pa.int64())  # the same types as PTS pairs, so both rounds' files concatenate
    return pa.schema([("pair_id", pa.string()), ("query_id", pa.string()), ("model_id", pa.string()),
                      ("prompt_ids", ids), ("chosen_ids", ids), ("rejected_ids", ids),
                      ("prompt_text", pa.string()), ("chosen_text", pa.string()), ("rejected_text", pa.string()),
                      *[(c, pa.float64()) for c in _SCORE_COLS],
                      ("decided_by", pa.string()), ("pairwise", pa.string()), ("template_id", pa.string())])


def _pair_row(query: dict, prompt_ids: list[int], outcome, template: Template) -> dict:
    chosen, rejected = outcome.pair
    digest = hashlib.sha1(json.dumps([chosen.ids, rejected.ids]).encode()).hexdigest()[:12]
    row = {"pair_id": f"{query['id']}:{digest}", "query_id": query["id"],
           "model_id": f"{chosen.model_id}>{rejected.model_id}",  # chosen's policy > rejected's policy
           "prompt_ids": prompt_ids, "chosen_ids": chosen.ids, "rejected_ids": rejected.ids,
           "prompt_text": query["question"], "chosen_text": chosen.text, "rejected_text": rejected.text,
           "decided_by": outcome.decided_by,
           "pairwise": outcome.pairwise.status if outcome.pairwise else "skipped",
           "template_id": template.id}
    for side, c in (("chosen", chosen), ("rejected", rejected)):
        row.update({f"{side}_{k}": float(v) for k, v in c.scores.items()})
    return row


async def abuild_judged_pairs(prompts: list[dict], policies: list, judge, out_dir, concurrency: int = 8, *,
                              oracle=None, keep_truncated: bool = False, confirm_pairwise: bool = True,
                              min_accuracy_gap: float = 1.0, min_overall_gap: float = 1.0,
                              template: Template = JUDGE_TEMPLATE) -> dict:
    """`build_judged_pairs` inside a running event loop (an async actor, a notebook)."""
    out_dir = Path(out_dir)
    t0 = time.time()
    tok = policies_tokenizer(policies)

    async def work(q: dict) -> dict:
        prompt_ids = tok.render_prompt(q["question"])
        cands = await _respond_all(policies, prompt_ids, q["question"])
        o = await judge_prompt(judge, q["question"], cands, reference=q.get("answer"), oracle=oracle,
                               keep_truncated=keep_truncated, confirm_pairwise=confirm_pairwise,
                               min_accuracy_gap=min_accuracy_gap, min_overall_gap=min_overall_gap, template=template)
        return {"query_id": q["id"], "status": "pair" if o.pair else "no_pair", "reason": o.reason,
                "detail": json.dumps(o.candidate_reasons), "template_id": template.id,
                "pair": _pair_row(q, prompt_ids, o, template) if o.pair else None,
                "candidates": [candidate_record(c) for c in cands],
                "pairwise": None if o.pairwise is None else {"status": o.pairwise.status, "winner": o.pairwise.winner,
                                                             "orders": o.pairwise.orders, "raw": o.pairwise.raw},
                "judge_calls": o.judge_calls, "parse_failures": o.parse_failures,
                "position_inconsistent": o.pairwise is not None and o.pairwise.status == "inconsistent"}

    try:
        results = await run_resumable(prompts, work, out_dir / "results.jsonl", concurrency, template.id)
    finally:
        await aclose_all(judge, *policies)
    return write_pair_outputs(results, out_dir, template, [getattr(p, "model_id", "?") for p in policies],
                              time.time() - t0)


def policies_tokenizer(policies: list):
    """The one tokenizer every policy's ids are in (a policy's `tok`; Phi-4's where it has none):
    a pair's prompt, chosen and rejected ids must all be the trained model's."""
    toks = [getattr(p, "tok", None) or tokenizer_for(None) for p in policies]
    if len({t.identity for t in toks}) > 1:
        raise ValueError("the policies' responses are in different tokenizers "
                         f"({sorted({t.identity for t in toks})}); pairs need the trained model's one")
    return toks[0]


def build_judged_pairs(prompts: list[dict], policies: list, judge, out_dir, concurrency: int = 8, **kw) -> dict:
    """Responses from every policy for every prompt, judged into (chosen, rejected) pairs; writes
    out_dir/{pairs.parquet, no_pair.jsonl, report.json} and returns the report. Options:
    `oracle(text, reference) -> bool` for accuracy where prompts carry an "answer";
    `keep_truncated` to judge cut-off responses; `confirm_pairwise` (default on) for the
    two-order pairwise check; the selection margins; the judge `template`."""
    return asyncio.run(abuild_judged_pairs(prompts, policies, judge, out_dir, concurrency, **kw))


def write_pair_outputs(results: list[dict], out_dir: Path, template: Template, policies: list[str],
                       wall_s: float) -> dict:
    rows = [r["pair"] for r in results if r["status"] == "pair"]
    misses = [r for r in results if r["status"] != "pair"]
    pq.write_table(pa.Table.from_pylist(rows, schema=pair_schema()), out_dir / "pairs.parquet")
    with open(out_dir / "no_pair.jsonl", "w") as f:
        for r in misses:
            f.write(json.dumps({"query_id": r["query_id"], "reason": r["reason"], "detail": r.get("detail")}) + "\n")
    no_pair = {reason: sum(r["reason"] == reason for r in misses)
               for reason in (*NO_PAIR_REASONS, "error") if any(r["reason"] == reason for r in misses)}
    cand_reasons: dict[str, int] = {}
    for r in results:
        for c in r.get("candidates", []):
            cand_reasons[c["reason"] or "ok"] = cand_reasons.get(c["reason"] or "ok", 0) + 1
    report = {"template_id": template.id, "policies": policies, "prompts_in": len(results), "pairs": len(rows),
              "no_pair": no_pair, "acceptance_rate": len(rows) / len(results) if results else None,
              "candidates": sum(cand_reasons.values()), "candidate_reasons": cand_reasons,
              "judge_calls": sum(r.get("judge_calls", 0) for r in results),
              "parse_failures": sum(r.get("parse_failures", 0) for r in results),
              "position_inconsistencies": sum(bool(r.get("position_inconsistent")) for r in results),
              "decided_by": {k: sum(row["decided_by"] == k for row in rows) for k in ("oracle", "judge")},
              "wall_s": round(wall_s, 2)}
    if report["prompts_in"] != report["pairs"] + sum(no_pair.values()):
        raise AssertionError(f"judge accounting broken: {report}")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    log.info("judge: %d/%d prompts paired; no pair: %s", len(rows), len(results), no_pair)
    return report
