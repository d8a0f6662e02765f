"""Run evaluation suites against an OpenAI-compatible endpoint and grade the answers.

The endpoint is anything `phi4ray.serve.endpoint.OpenAIEndpoint` talks to: our Ray Serve app after each
stage, or an external server. Items go out with bounded concurrency, through the chat endpoint
(the rendered prompt as the user message) or the plain completions endpoint (the same text as a
raw prompt), and come back graded by their kind (`phi4ray.evals.kinds`: math, choice, code,
ifeval, or any kind registered there). Grading runs off the event loop, in a thread, so a slow
sandboxed test run never stalls requests. An item whose grade's detail lists `followed` verdicts
(ifeval) adds them to the instruction-level accuracy, as IFEval reports it.

Every item ends as one JSON record, appended to the records file as soon as it is graded, so a run
that dies resumes with only what is left. An endpoint failure (after the client's retries) becomes
a record with `error` set: counted apart from accuracy's denominator and reported, never lost, and
retried by the next run. Accuracy comes with a 95% Wilson interval (suites are small: a normal
interval would leave [0, 1] at the extremes), and with several samples per item, the unbiased
pass@k of Chen et al. (2021).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phi4ray.evals.jsonl import atomic_write
from phi4ray.evals.kinds import Grade, get_kind, render_completion, render_prompt
from phi4ray.evals.schema import EvalItem, Suite
from phi4ray.serve.endpoint import EndpointError, OpenAIEndpoint
from phi4ray.serve.sampling import derived_seed
from phi4ray.verify.sandbox import SandboxLimits

log = logging.getLogger(__name__)

MODES = ("chat", "completion")


class EvalError(ValueError):
    """A run that cannot start as asked (bad arguments, a records file from another run)."""


# --- statistics -------------------------------------------------------------------------------
def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; (0, 1) when n == 0."""
    if not (isinstance(k, int) and isinstance(n, int) and 0 <= k <= n):
        raise ValueError(f"wilson_interval: need integers 0 <= k <= n, got k={k!r}, n={n!r}")
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # the interval holds p; at k = 0 or k = n an end equals p exactly, which rounding may miss by
    # 1e-17 (0/22 gave a low of 1.4e-17, above the accuracy, and the plot's error bar went negative)
    return max(0.0, min(p, center - half)), min(1.0, max(p, center + half))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k), computed as
    a product so large n does not overflow."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def item_seed(seed: int | None, item_id: str) -> int | None:
    """The sampling seed of one item's request (phi4ray.serve.sampling.derived_seed of the run's seed and
    the item's id). One seed for every request would give two items with the same prompt the same
    sampled answer (the toy suites ask one question many times): one draw counted many times."""
    return None if seed is None else derived_seed(seed, item_id)


# --- grading ----------------------------------------------------------------------------------
def grade(item: EvalItem, response: str | None, sandbox_limits: SandboxLimits | None = None) -> Grade:
    """Grade one response to one item by its kind. Never raises on any response text."""
    return get_kind(item.kind).grade(item, response if isinstance(response, str) else None, sandbox_limits)


# --- results ----------------------------------------------------------------------------------
@dataclass
class SuiteResult:
    suite: str
    version: str
    mode: str
    model: str
    n_items: int  # items in the suite = n + errors
    n: int  # graded items: the accuracy's denominator
    correct: int  # graded items whose first sample is correct
    errors: int  # items the endpoint never answered (records with `error`), not in n
    accuracy: float | None  # correct / n; None when nothing was graded
    ci_low: float
    ci_high: float
    samples: int
    pass_at_k: dict[str, float]  # "pass@k" -> mean over graded items (samples > 1 only)
    reasons: dict[str, int]  # first-sample reasons of graded items and the error rows' reasons
    by_kind: dict[str, dict[str, int]]  # kind -> {"n", "correct"}
    instructions: dict[str, Any] | None  # ifeval: followed / total / accuracy / ci
    latency_s: dict[str, float]  # mean / p50 / max over answered items
    wall_s: float
    records: list[dict] = field(repr=False, default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Everything but the records: the JSON-able line for summary.json."""
        return {k: v for k, v in self.__dict__.items() if k != "records"}


def _summarize(suite: Suite, records: list[dict], *, mode: str, model: str, samples: int, wall_s: float
               ) -> SuiteResult:
    graded = [r for r in records if r["error"] is None]
    errors = len(records) - len(graded)
    correct = sum(bool(r["correct"]) for r in graded)
    lo, hi = wilson_interval(correct, len(graded))
    reasons = Counter(r["reason"] for r in records)  # error rows say theirs: endpoint / malformed / grading
    by_kind: dict[str, dict[str, int]] = {}
    for r in graded:
        k = by_kind.setdefault(r["kind"], {"n": 0, "correct": 0})
        k["n"] += 1
        k["correct"] += bool(r["correct"])
    passes = {}
    if samples > 1 and graded:
        for k in sorted({samples} | {k for k in (1, 2, 5, 10, 20, 50, 100) if k < samples}):
            passes[f"pass@{k}"] = sum(pass_at_k(r["n_samples"], r["n_correct"], k) for r in graded) / len(graded)
    instructions = None
    followed = [ok for r in graded for ok in r["detail"].get("followed", [])]
    if followed:
        ilo, ihi = wilson_interval(sum(followed), len(followed))
        instructions = {"followed": sum(followed), "total": len(followed),
                        "accuracy": sum(followed) / len(followed), "ci_low": ilo, "ci_high": ihi}
    lat = sorted(r["latency_s"] for r in graded)
    latency = {"mean": sum(lat) / len(lat), "p50": lat[len(lat) // 2], "max": lat[-1]} if lat else {}
    return SuiteResult(suite.name, suite.version, mode, model, len(suite.items), len(graded), correct, errors,
                       correct / len(graded) if graded else None, lo, hi, samples, passes, dict(reasons),
                       by_kind, instructions, latency, wall_s, records)


# --- records file (resume) --------------------------------------------------------------------
def _read_records(path: Path, suite: Suite, fingerprint: dict) -> dict[str, dict]:
    """The latest record per item id of an earlier run with the same settings. A torn last line (a
    crash mid-write) is skipped; records of another suite version or setting are refused."""
    done: dict[str, dict] = {}
    ids = {item.id for item in suite.items}
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            rec_id, rec_run = rec["id"], rec["run"]
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s:%d: unreadable record skipped (torn write?); its item runs again", path, lineno)
            continue
        if rec_run != fingerprint:
            changed = sorted(k for k in fingerprint if rec_run.get(k) != fingerprint[k])
            raise EvalError(f"{path}:{lineno}: records come from a run with different {changed} "
                            f"({ {k: rec_run.get(k) for k in changed} } != { {k: fingerprint[k] for k in changed} }); "
                            "use another output directory")
        if rec_id in ids:
            done[rec_id] = rec  # later lines win: a retried error row is replaced by its answer
    return done


# --- the run ----------------------------------------------------------------------------------
def _texts(resp: dict, mode: str) -> list[tuple[str | None, str | None]]:
    """(text, finish_reason) per choice, in index order."""
    choices = sorted(resp["choices"], key=lambda c: c.get("index", 0))
    if mode == "chat":
        return [((c.get("message") or {}).get("content"), c.get("finish_reason")) for c in choices]
    return [(c["text"], c.get("finish_reason")) for c in choices]


async def _ask(endpoint: OpenAIEndpoint, prompt: str, *, mode: str, samples: int, max_tokens: int,
               temperature: float, seed: int | None, stop: list[str] | None) -> list[tuple[str | None, str | None]]:
    out: list[tuple[str | None, str | None]] = []
    for _ in range(samples):  # servers that ignore `n` are topped up with further calls
        n = samples - len(out)
        if mode == "chat":
            extra = {"stop": stop} if stop else None
            resp = await endpoint.chat([{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                       temperature=temperature, n=n, seed=seed, extra=extra)
        else:
            resp = await endpoint.completions(prompt, max_tokens=max_tokens, temperature=temperature, n=n,
                                              seed=seed, stop=stop)
        got = _texts(resp, mode)
        if not got:
            raise ValueError("the response has no choices")
        out.extend(got[:n])
        if len(out) >= samples:
            break
    return out


async def run_suite(endpoint: OpenAIEndpoint, suite: Suite, *, mode: str = "chat", max_tokens: int = 1024,
                    temperature: float = 0.0, samples: int = 1, concurrency: int = 8,
                    sandbox_limits: SandboxLimits | None = None, records_path: str | os.PathLike | None = None,
                    retry_errors: bool = True, seed: int | None = None, stop: list[str] | None = None,
                    model_label: str | None = None) -> SuiteResult:
    """Send every item of `suite` to `endpoint` and grade the answers.

    With `records_path`, records already there from the same settings are reused (items with an
    endpoint error run again unless `retry_errors` is False) and each new record is appended as it
    is graded. `samples` answers per item (pass@k); accuracy counts each item's first answer.
    `seed` seeds each item's request apart (`item_seed`).
    `model_label` names the model in the records when the endpoint's model id does not (a
    replica that serves several checkpoints in turn under one id)."""
    if mode not in MODES:
        raise EvalError(f"mode={mode!r} must be one of {MODES}")
    for name, value in (("samples", samples), ("concurrency", concurrency), ("max_tokens", max_tokens)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EvalError(f"{name}={value!r} must be a positive integer")
    if temperature < 0:
        raise EvalError(f"temperature={temperature!r} must be >= 0")
    model = model_label or endpoint.config.model
    fingerprint = {"version": suite.version, "mode": mode, "model": model, "samples": samples,
                   "temperature": temperature, "max_tokens": max_tokens, "seed": seed}
    path = Path(records_path) if records_path is not None else None
    done = _read_records(path, suite, fingerprint) if path is not None and path.exists() else {}
    if retry_errors:
        done = {k: r for k, r in done.items() if r["error"] is None}
    todo = [item for item in suite.items if item.id not in done]
    if done:
        log.info("%s: %d of %d items already graded, running %d", suite.name, len(done), len(suite.items), len(todo))

    if samples > 1 and temperature == 0:
        log.warning("%s: %d samples at temperature 0 are (nearly) identical; pass@k needs sampling", suite.name,
                    samples)
    start = time.monotonic()
    finished = 0
    every = max(1, len(todo) // 10)  # progress about ten times a run
    request_slots = asyncio.Semaphore(concurrency)
    grade_slots = asyncio.Semaphore(max(2, os.cpu_count() or 1))  # sandboxes are CPU-bound processes
    sink = None
    if path is not None and todo:
        path.parent.mkdir(parents=True, exist_ok=True)
        sink = open(path, "a", encoding="utf-8")

    async def one(item: EvalItem) -> dict:
        nonlocal finished
        prompt = render_prompt(item) if mode == "chat" else render_completion(item)
        rec: dict[str, Any] = {"id": item.id, "kind": item.kind, "suite": suite.name, "prompt": prompt,
                               "response": None, "correct": None, "reason": "endpoint error", "detail": {},
                               "finish_reason": None, "n_samples": 0, "n_correct": 0, "latency_s": None,
                               "error": None, "run": fingerprint}
        t0 = time.monotonic()
        try:
            async with request_slots:
                answers = await _ask(endpoint, prompt, mode=mode, samples=samples, max_tokens=max_tokens,
                                     temperature=temperature, seed=item_seed(seed, item.id), stop=stop)
        except EndpointError as e:
            rec["error"] = str(e)
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # a reply not shaped like OpenAI's
            rec.update(error=f"malformed response: {type(e).__name__}: {e}"[:500], reason="malformed response")
        rec["latency_s"] = round(time.monotonic() - t0, 4)
        if rec["error"] is None:
            try:
                async with grade_slots:
                    grades = [await asyncio.to_thread(grade, item, text, sandbox_limits) for text, _ in answers]
            except Exception as e:  # a grader bug must cost one item, not the run
                log.exception("%s: grading %s failed", suite.name, item.id)
                rec.update(error=f"grading failed: {type(e).__name__}: {e}"[:500], reason="grading error")
            else:
                first = grades[0]
                rec.update(response=answers[0][0], correct=first.correct, reason=first.reason, detail=first.detail,
                           finish_reason=answers[0][1], n_samples=len(grades),
                           n_correct=sum(g.correct for g in grades))
                if samples > 1:
                    rec["samples"] = [{"response": text, "correct": g.correct, "reason": g.reason}
                                      for (text, _), g in zip(answers, grades)]
        if sink is not None:  # one whole line per item, flushed: a crash loses at most this item
            sink.write(json.dumps(rec, ensure_ascii=False) + "\n")
            sink.flush()
        finished += 1
        if finished % every == 0 or finished == len(todo):
            log.info("%s: %d/%d items done", suite.name, finished, len(todo))
        return rec

    try:
        fresh = await asyncio.gather(*(one(item) for item in todo))
    finally:
        if sink is not None:
            sink.close()
    by_id = {**done, **{r["id"]: r for r in fresh}}
    records = [by_id[item.id] for item in suite.items]
    result = _summarize(suite, records, mode=mode, model=model, samples=samples, wall_s=time.monotonic() - start)
    log.info("%s: accuracy %s (%d/%d, 95%% CI %.3f-%.3f), %d endpoint errors", suite.name,
             "n/a" if result.accuracy is None else f"{result.accuracy:.3f}", result.correct, result.n,
             result.ci_low, result.ci_high, result.errors)
    return result


async def run_suites(endpoint: OpenAIEndpoint, suites: list[Suite], *, out_dir: str | os.PathLike | None = None,
                     **kwargs: Any) -> list[SuiteResult]:
    """`run_suite` for each suite in turn (each with its own bounded concurrency). With `out_dir`,
    records go to `<out_dir>/<suite>.jsonl` as they finish (so a rerun resumes) and
    `write_results` writes the summary at the end."""
    names = [s.name for s in suites]
    if len(set(names)) != len(names):
        raise EvalError(f"suite names must be distinct (they name the result files), got {names}")
    results = []
    for suite in suites:
        path = Path(out_dir) / f"{suite.name}.jsonl" if out_dir is not None else None
        results.append(await run_suite(endpoint, suite, records_path=path, **kwargs))
    if out_dir is not None:
        write_results(results, out_dir)
    return results


def write_results(results: list[SuiteResult], out_dir: str | os.PathLike) -> Path:
    """Write `<suite>.jsonl` (one record per item, in suite order: the append log compacted) and
    `summary.json` (every suite's summary); returns the summary's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        atomic_write(out / f"{r.suite}.jsonl", "".join(json.dumps(rec, ensure_ascii=False) + "\n"
                                                        for rec in r.records))
    summary = out / "summary.json"
    atomic_write(summary, json.dumps({"suites": {r.suite: r.summary() for r in results}}, indent=2,
                                      ensure_ascii=False) + "\n")
    return summary
