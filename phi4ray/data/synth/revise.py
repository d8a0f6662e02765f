"""Self-revision: generate, critique against a rubric, revise; repeat until the rubric is cleared.

For each seed task: a first response (the seed's `draft`, or one generated with the `respond`
template), then rounds of critique -> revise. The critique grades reasoning and factual accuracy,
each 1-10 (`critique` template, parsed strictly by `parse_critique`); the loop stops with status
"ok" as soon as the lowest score reaches `threshold`, or after `max_rounds` rounds with status
"below_threshold". A round is one critique that did not clear the bar plus the revision it asks
for, so the final text is always the one the last critique graded. A critique that does not parse
(or a revision that comes back empty) is a failed round: it uses up the round, its reason goes
into the trace, and the same text is critiqued again; if the budget ends on an unparseable
critique the status is "unparseable_critique". The whole trace (every draft, critique and score)
is kept as a JSON string, whatever the outcome.

Seeds advance in lock step, one call_all per phase per round, so the engine sees full batches.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pyarrow as pa

from phi4ray.data.synth.llm import CallConfig, Engine, Request, Sampling, call_all, make_row, require, seed_value
from phi4ray.data.synth.templates import load_template, strip_label
from phi4ray.verify.score_lines import LINE_DRESS, SCORE_VALUE, score_value

CRITERIA = ("reasoning", "factual_accuracy")
_CRITERION = re.compile(LINE_DRESS + r"(reasoning|factual[ _]accuracy)" + SCORE_VALUE, re.I | re.M)
_MAX_CHARS = 20_000  # critique text past this is junk; keeps the regex work bounded

SCHEMA = pa.schema([("seed_id", pa.string()), ("template_id", pa.string()), ("status", pa.string()),
                    ("task", pa.string()), ("draft", pa.string()), ("text", pa.string()), ("rounds", pa.int32()),
                    ("score_reasoning", pa.float64()), ("score_factual_accuracy", pa.float64()),
                    ("min_score", pa.float64()), ("trace", pa.string())])


@dataclass(frozen=True)
class ReviseConfig:
    threshold: float = 8.0   # lowest rubric score that ends the loop with "ok"
    max_rounds: int = 3      # critique -> revise rounds at most (critiques: at most max_rounds + 1)
    generate: Sampling = field(default_factory=lambda: Sampling(max_tokens=1024, temperature=0.7))
    # guided, the critique's form (templates/critique.txt) takes up to ~90 tokens: feedback first
    # (240 characters at most), then the two grades; fewer tokens cut it before its grades
    critique: Sampling = field(default_factory=lambda: Sampling(max_tokens=512, temperature=0.3))
    revise: Sampling = field(default_factory=lambda: Sampling(max_tokens=1024, temperature=0.5))
    generate_template: str = "respond"  # used when a seed brings no draft

    def __post_init__(self) -> None:
        require("ReviseConfig", self, {"threshold": (1 <= self.threshold <= 10, "in [1, 10]"),
                                       "max_rounds": (self.max_rounds >= 0, ">= 0")})


def parse_critique(text) -> dict | None:
    """{"reasoning", "factual_accuracy"} -> score in [1, 10]; None unless both parse in range.
    The last line for a criterion wins, so a critic that thinks aloud first still parses."""
    if not isinstance(text, str):
        return None
    found = {}
    for m in _CRITERION.finditer(text[-_MAX_CHARS:]):
        found[m.group(1).lower().replace(" ", "_")] = score_value(m.group(2))
    if set(found) != set(CRITERIA) or None in found.values():
        return None
    return {c: found[c] for c in CRITERIA}


class _Task:
    def __init__(self, row: dict, task: str):
        self.row, self.task, self.trace, self.scores = row, task, [], None

    def log(self, step: str, **info) -> None:
        self.trace.append({"round": self.row["rounds"], "step": step, **info})

    def finish(self, status: str) -> None:
        self.row["status"] = status


async def revise_step(engine: Engine, seeds: list[dict], config: ReviseConfig = ReviseConfig(),
                      call: CallConfig = CallConfig()) -> list[dict]:
    """Seeds {"seed_id", "task", optional "draft"} -> one row of SCHEMA each, in seed order."""
    gen_t, crit_t, rev_t = (load_template(n) for n in (config.generate_template, "critique", "revise"))
    rows, tasks = [], []
    for seed in seeds:
        sid, task, bad = seed_value(seed, "task")
        draft = seed.get("draft") if bad is None else None
        has_draft = isinstance(draft, str) and bool(draft.strip())
        used = [crit_t, rev_t] if has_draft else [gen_t, crit_t, rev_t]
        # draft: the first response, the seed's or generated (template_id says which), for before/after pairs
        row = make_row(SCHEMA, seed_id=sid, template_id="+".join(t.template_id for t in used), status=bad,
                       task=task, draft=draft if has_draft else None, rounds=0)
        rows.append(row)
        if bad is None:
            t = _Task(row, task)
            if has_draft:
                row["text"] = draft
                t.log("draft", text=draft)
            tasks.append(t)

    fresh = [t for t in tasks if t.row["text"] is None]
    outs = await call_all(engine, [Request.of(gen_t.render(task=t.task), config.generate) for t in fresh],
                          **call.kwargs())
    for t, out in zip(fresh, outs):
        text = out.text.strip() if out.ok else ""
        t.log("generate", text=text, error=out.error)
        if not out.ok or not text:
            t.finish(out.error or "empty_response")
        else:
            t.row["text"] = t.row["draft"] = text

    active = [t for t in tasks if t.row["status"] is None]
    while active:
        outs = await call_all(engine, [Request.of(crit_t.render(task=t.task, response=t.row["text"]), config.critique,
                                                  guide=crit_t.guide)
                                       for t in active], **call.kwargs())
        to_revise = []
        for t, out in zip(active, outs):
            t.scores = parse_critique(out.text) if out.ok else None  # scores always describe row["text"]
            if not out.ok:
                t.log("critique", error=out.error)
                t.finish(out.error)
                continue
            t.log("critique", text=out.text, scores=t.scores, error=None if t.scores else "unparseable_critique")
            if t.scores and min(t.scores.values()) >= config.threshold:
                t.finish("ok")
            elif t.row["rounds"] >= config.max_rounds:
                t.finish("below_threshold" if t.scores else "unparseable_critique")
            else:
                t.row["rounds"] += 1
                if t.scores:
                    to_revise.append((t, out.text))
        outs = await call_all(engine, [Request.of(rev_t.render(task=t.task, response=t.row["text"], critique=c),
                                                  config.revise) for t, c in to_revise], **call.kwargs())
        for (t, _), out in zip(to_revise, outs):
            if not out.ok:
                t.log("revise", error=out.error)
                t.finish(out.error)
                continue
            text = strip_label(out.text, "Improved response", "Revised response")
            t.log("revise", text=text, error=None if text else "empty_revision")
            if text:  # an empty revision is a failed round: the previous text is critiqued again
                t.row["text"] = text
        active = [t for t in active if t.row["status"] is None]

    for t in tasks:
        if t.scores:
            t.row.update(score_reasoning=t.scores["reasoning"], score_factual_accuracy=t.scores["factual_accuracy"],
                         min_score=min(t.scores.values()))
        t.row["trace"] = json.dumps(t.trace, ensure_ascii=False)
    return rows
