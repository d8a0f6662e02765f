"""Judge-guided data on Ray: DPO round 2 pairs and SFT best-of-N, from the fleet or endpoints.

Responses come from several "policies": the Serve sampler fleet (token level, through a
deployment handle) or an external OpenAI-compatible endpoint (a teacher model). The judge is the
fleet or an endpoint too. All of this is waiting on models, so one asyncio loop drives it (in the
driver or in any actor): a semaphore bounds the prompts in flight (each prompt's policy and judge
calls run concurrently) and the fleet spreads the calls over its replicas.

Outputs of `build_judged_pairs(prompts, policies, judge, out_dir)`:
- out_dir/pairs.parquet: PAIR_SCHEMA, token ids for the DPO trainer plus readable texts, judge
  scores and the template id;
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
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from actors.serve_names import APP_NAME
from phi4ray.judge import (
    JUDGE_TEMPLATE_V1,
    NO_PAIR_REASONS,
    Candidate,
    Template,
    best_of_n,
    judge_prompt,
    overall,
    score_candidates,
    shortfall_reason,
)
from phi4ray.manifest import read_checkpoint_lines
from phi4ray.sampling import SampleRequest
from phi4ray.tokenizer import IM_END, get_tokenizer

log = logging.getLogger("phi4ray.judge")


def render_prompt(question: str) -> list[int]:
    return get_tokenizer().render_chat([{"role": "user", "content": question}], add_generation_prompt=True).ids


def decode_response(ids: list[int]) -> str:
    return get_tokenizer().decode(ids[:-1] if ids and ids[-1] == IM_END else ids)


# --- policies: who writes the responses ----------------------------------------------------------
@dataclass
class FleetPolicy:
    """Responses sampled from the Serve fleet. `sampler` defaults to a FleetSampler on
    (deployment, app); anything with `async sample(SampleRequest)` works (tests record calls)."""
    model_id: str
    deployment: str = ""
    app: str = APP_NAME
    n: int = 1
    max_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    sampler: object = None

    def __post_init__(self) -> None:
        if self.sampler is None:
            from actors.sampler_client import FleetSampler  # deferred: Ray Serve loads only when no sampler is given

            self.sampler = FleetSampler(self.deployment, self.app)

    async def respond(self, prompt_ids: list[int], question: str, n: int | None = None) -> list[Candidate]:
        samples = await self.sampler.sample(SampleRequest(
            prompt_ids=list(prompt_ids), n=n or self.n, max_tokens=self.max_tokens, temperature=self.temperature,
            top_p=self.top_p, seed=self.seed, stop_ids=[IM_END]))
        # the sampled ids are the response, exactly: DPO then trains on the tokens the policy
        # produced (ending with <|im_end|> when it stopped), with no decode/re-encode drift
        return [Candidate(self.model_id, list(s.token_ids), decode_response(s.token_ids), s.finish_reason)
                for s in samples]


class EndpointPolicy:
    """Responses from an external OpenAI-compatible chat endpoint (a teacher model)."""

    def __init__(self, model_id: str, config, n: int = 1, max_tokens: int = 1024, temperature: float = 1.0):
        self.model_id, self.config, self.n = model_id, config, n
        self.max_tokens, self.temperature = max_tokens, temperature
        self._client = None

    def _endpoint(self):
        from phi4ray.endpoint import OpenAIEndpoint  # deferred: httpx loads only for endpoint policies

        if self._client is None:  # created inside the running loop: the client binds to it
            self._client = OpenAIEndpoint(self.config)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def respond(self, prompt_ids: list[int], question: str, n: int | None = None) -> list[Candidate]:
        out = await self._endpoint().chat([{"role": "user", "content": question}], max_tokens=self.max_tokens,
                                          temperature=self.temperature, n=n or self.n)
        tok, cands = get_tokenizer(), []
        for choice in out.get("choices", []):
            text = (choice.get("message") or {}).get("content") or ""
            finish = choice.get("finish_reason") or "stop"
            # the endpoint gives text, not our token ids: encode it as ordinary text (special-token
            # strings in it stay text) and close the turn with <|im_end|>, as the fleet's own
            # samples end; a cut-off answer gets no <|im_end|>, so it is never taught as finished
            ids = tok.encode_ordinary(text) + ([IM_END] if finish == "stop" else [])
            cands.append(Candidate(self.model_id, ids, text, finish))
        return cands


# --- judges: async callables prompt_text -> answer text --------------------------------------------
@dataclass
class FleetJudge:
    """The judge prompt rendered as a user turn, answered greedily by the fleet, decoded."""
    deployment: str = ""
    app: str = APP_NAME
    max_tokens: int = 128
    sampler: object = None

    def __post_init__(self) -> None:
        if self.sampler is None:
            from actors.sampler_client import FleetSampler  # deferred: Ray Serve loads only when no sampler is given

            self.sampler = FleetSampler(self.deployment, self.app)

    async def __call__(self, prompt_text: str) -> str:
        req = SampleRequest(prompt_ids=render_prompt(prompt_text), n=1, max_tokens=self.max_tokens,
                            temperature=0.0, stop_ids=[IM_END])
        return decode_response((await self.sampler.sample(req))[0].token_ids)


class EndpointJudge:
    """A judge behind an external OpenAI-compatible endpoint, answering at temperature 0."""

    def __init__(self, config, max_tokens: int = 256):
        self.config, self.max_tokens, self._client = config, max_tokens, None

    async def __call__(self, prompt_text: str) -> str:
        from phi4ray.endpoint import OpenAIEndpoint  # deferred: httpx loads only for endpoint judges

        if self._client is None:
            self._client = OpenAIEndpoint(self.config)
        out = await self._client.chat([{"role": "user", "content": prompt_text}], max_tokens=self.max_tokens,
                                      temperature=0.0)
        return (out["choices"][0].get("message") or {}).get("content") or ""

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


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


async def _run_resumable(prompts: list[dict], work, ckpt: Path, concurrency: int, template_id: str) -> list[dict]:
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


async def _aclose(*objs) -> None:
    for o in objs:
        if hasattr(o, "aclose"):
            await o.aclose()


async def _respond_all(policies: list, prompt_ids: list[int], question: str, n: int | None = None) -> list[Candidate]:
    per_policy = await asyncio.gather(*(p.respond(prompt_ids, question, n) for p in policies))
    return [c for cands in per_policy for c in cands]


def _candidate_record(c: Candidate) -> dict:
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
                              template: Template = JUDGE_TEMPLATE_V1) -> dict:
    """`build_judged_pairs` inside a running event loop (an async actor, a notebook)."""
    out_dir = Path(out_dir)
    t0 = time.time()

    async def work(q: dict) -> dict:
        prompt_ids = render_prompt(q["question"])
        cands = await _respond_all(policies, prompt_ids, q["question"])
        o = await judge_prompt(judge, q["question"], cands, reference=q.get("answer"), oracle=oracle,
                               keep_truncated=keep_truncated, confirm_pairwise=confirm_pairwise,
                               min_accuracy_gap=min_accuracy_gap, min_overall_gap=min_overall_gap, template=template)
        return {"query_id": q["id"], "status": "pair" if o.pair else "no_pair", "reason": o.reason,
                "detail": json.dumps(o.candidate_reasons), "template_id": template.id,
                "pair": _pair_row(q, prompt_ids, o, template) if o.pair else None,
                "candidates": [_candidate_record(c) for c in cands],
                "pairwise": None if o.pairwise is None else {"status": o.pairwise.status, "winner": o.pairwise.winner,
                                                             "orders": o.pairwise.orders, "raw": o.pairwise.raw},
                "judge_calls": o.judge_calls, "parse_failures": o.parse_failures,
                "position_inconsistent": o.pairwise is not None and o.pairwise.status == "inconsistent"}

    try:
        results = await _run_resumable(prompts, work, out_dir / "results.jsonl", concurrency, template.id)
    finally:
        await _aclose(judge, *policies)
    return write_pair_outputs(results, out_dir, template, [getattr(p, "model_id", "?") for p in policies],
                              time.time() - t0)


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


# --- SFT: best of N -------------------------------------------------------------------------------
async def abest_of_n_sft(prompts: list[dict], policy, judge, n: int, out_path, concurrency: int = 8, *,
                         oracle=None, keep_truncated: bool = False, min_score: float | None = None,
                         template: Template = JUDGE_TEMPLATE_V1) -> dict:
    """`best_of_n_sft` inside a running event loop."""
    out_path = Path(out_path)
    base = out_path.with_suffix("")

    async def work(q: dict) -> dict:
        cands = await policy.respond(render_prompt(q["question"]), q["question"], n)
        calls = await score_candidates(judge, q["question"], cands, reference=q.get("answer"), oracle=oracle,
                                       keep_truncated=keep_truncated, template=template)
        best = best_of_n([c.scores if c.eligible else None for c in cands])
        r = {"query_id": q["id"], "status": "kept", "reason": None, "judge_calls": calls,
             "parse_failures": sum(c.reason == "unparseable" for c in cands), "template_id": template.id,
             "candidates": [_candidate_record(c) for c in cands]}
        if best is None:
            r.update(status="skipped", reason=shortfall_reason(cands))
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
        results = await _run_resumable(prompts, work, Path(f"{base}.results.jsonl"), concurrency, template.id)
    finally:
        await _aclose(judge, policy)
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
    phi4ray.sft.read_conversations reads); `<out>.skipped.jsonl` names every prompt left out and
    why, `<out>.report.json` the counts. Resumable through `<out>.results.jsonl`."""
    return asyncio.run(abest_of_n_sft(prompts, policy, judge, n, out_path, concurrency, **kw))
