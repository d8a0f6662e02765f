"""LLM-judge logic for SFT best-of-N and DPO round 2 (judge-guided full-response pairs).

Phi-4's SFT keeps the best of N responses by an LLM judge, and its second DPO round pairs
responses from several models by a judge's verdict on accuracy, style and detail. This module is
the plain-Python part: prompt templates, output parsing, position-bias control and pair
selection. The judge is any async callable `judge(prompt_text, guide=None) -> str` (the sampler fleet, an
external OpenAI-compatible endpoint, or a scripted fake in tests); phi4ray/posttrain/judged_pairs.py and
phi4ray/posttrain/judged_sft.py drive it over many prompts, actors/posttrain/judge.py puts the fleet behind it.

Design choices:
- Templates are versioned (`Template.id` goes on every output row), so pairs labelled by
  different judge prompts are never mixed unknowingly.
- Judge output is untrusted text: `parse_scores` / `parse_verdict` return None on anything but
  the strict answer form, never raise. A None is a recorded failure, not a dropped row.
- Selection ranks by accuracy first, then the overall mean, and demands a margin: a pair the
  judge cannot clearly separate teaches DPO noise. When an oracle and a reference answer exist
  (math), accuracy comes from the oracle, which is exact, instead of the judge.
- LLM judges favour whichever response they see first. A pair chosen by judge scores is
  confirmed by a pairwise comparison in both orders, and stands only when both orders agree.
"""
from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from phi4ray.verify.score_lines import LINE_DRESS, SCORE_MAX, SCORE_MIN, SCORE_VALUE, score_value

CRITERIA = ("accuracy", "style", "detail")
Judge = Callable[..., Awaitable[str]]  # judge(prompt_text, guide=dict | None) -> its answer


@dataclass(frozen=True)
class Template:
    id: str      # recorded on every output row: change the wording or the answer forms, change the id
    single: str  # placeholders {prompt}, {response}
    pair: str    # placeholders {prompt}, {response_a}, {response_b}
    # the answer forms as regexes, sent as structured-output guides (phi4ray.serve.guide) so a small
    # judge's verdict always parses; "" leaves that answer free
    single_output: str = ""
    pair_output: str = ""

    def guide(self, which: str) -> dict | None:
        rx = self.single_output if which == "single" else self.pair_output
        return {"regex": rx} if rx else None


_SCORE = r"(10|[1-9])"
JUDGE_TEMPLATE = Template(
    id="phi4ray-judge-v2",
    single=(
        "You are grading one response to a user's prompt.\n"
        "Rate it on three criteria, each an integer from 1 (worst) to 10 (best):\n"
        "- accuracy: is it correct and does it answer what was asked?\n"
        "- style: is it clear, well organised and appropriately concise?\n"
        "- detail: does it give the depth, steps and explanation the prompt calls for?\n\n"
        "[Prompt]\n{prompt}\n[End of Prompt]\n\n"
        "[Response]\n{response}\n[End of Response]\n\n"
        "Answer with exactly these three lines and nothing else:\n"
        "accuracy: N\nstyle: N\ndetail: N"
    ),
    pair=(
        "You are comparing two responses, A and B, to a user's prompt.\n"
        "Rate each on three criteria, each an integer from 1 (worst) to 10 (best):\n"
        "- accuracy: is it correct and does it answer what was asked?\n"
        "- style: is it clear, well organised and appropriately concise?\n"
        "- detail: does it give the depth, steps and explanation the prompt calls for?\n"
        "Then say which response is better overall, weighing accuracy first. The order in which "
        "the responses appear says nothing about their quality.\n\n"
        "[Prompt]\n{prompt}\n[End of Prompt]\n\n"
        "[Response A]\n{response_a}\n[End of Response A]\n\n"
        "[Response B]\n{response_b}\n[End of Response B]\n\n"
        "Answer with exactly these seven lines and nothing else (better is A, B or tie):\n"
        "A accuracy: N\nA style: N\nA detail: N\nB accuracy: N\nB style: N\nB detail: N\nbetter: X"
    ),
    single_output=f"accuracy: {_SCORE}\nstyle: {_SCORE}\ndetail: {_SCORE}",
    pair_output="".join(f"{side} {c}: {_SCORE}\n" for side in "AB" for c in CRITERIA) + "better: (A|B|tie)",
)

_SINGLE = re.compile(LINE_DRESS + r"(accuracy|style|detail)" + SCORE_VALUE, re.I | re.M)
_PAIRED = re.compile(LINE_DRESS + r"(?:response[ \t]+)?([AB])[ \t'_-]*(?:s[ \t]+)?(accuracy|style|detail)" + SCORE_VALUE,
                     re.I | re.M)
_BETTER = re.compile(LINE_DRESS + r"better[ \t*_]*[:=][ \t*_]*(?:response[ \t]+)?(A|B|tie)\b[ \t\r*_.]*$", re.I | re.M)
_MAX_CHARS = 20_000  # judge output past this is junk; keeps the regex work bounded


def parse_scores(text) -> dict | None:
    """{"accuracy", "style", "detail"} -> score in [1, 10] from "accuracy: N" lines; None if any
    criterion is missing or out of range, or `text` is not a string."""
    if not isinstance(text, str):
        return None
    found = {m.group(1).lower(): score_value(m.group(2)) for m in _SINGLE.finditer(text[-_MAX_CHARS:])}
    if set(found) != set(CRITERIA) or any(v is None for v in found.values()):
        return None
    return {c: found[c] for c in CRITERIA}


def parse_verdict(text) -> dict | None:
    """{"better": "A" | "B" | "tie", "A": scores | None, "B": scores | None} from the pair
    template's answer; None without a "better:" line. Per-side scores are kept when complete."""
    if not isinstance(text, str):
        return None
    text = text[-_MAX_CHARS:]
    found = list(_BETTER.finditer(text))
    if not found:
        return None
    better = found[-1]  # the last "better:" line wins, as the last score lines do
    sides: dict[str, dict] = {"A": {}, "B": {}}
    for m in _PAIRED.finditer(text):
        sides[m.group(1).upper()][m.group(2).lower()] = score_value(m.group(3))
    scores = {s: ({c: d[c] for c in CRITERIA} if set(d) == set(CRITERIA) and None not in d.values() else None)
              for s, d in sides.items()}
    choice = better.group(1)
    return {"better": "tie" if choice.lower() == "tie" else choice.upper(), **scores}


def overall(scores: dict) -> float:
    return sum(scores[c] for c in CRITERIA) / len(CRITERIA)


def rank_key(scores: dict) -> tuple[float, float]:
    """Accuracy first, then the overall mean: a correct terse answer beats a wrong eloquent one."""
    return scores["accuracy"], overall(scores)


def best_of_n(scores: list[dict | None]) -> int | None:
    """Index of the best scored response (ties: the first); None when none was scored."""
    scored = [(rank_key(s), -i) for i, s in enumerate(scores) if s is not None]
    return -max(scored)[1] if scored else None


@dataclass
class Candidate:
    """One response to a prompt. `ids` are the response's token ids exactly as the policy produced
    them (ending with <|im_end|> iff it stopped by itself); `text` is what the judge reads."""
    model_id: str
    ids: list[int]
    text: str
    finish_reason: str = "stop"
    scores: dict | None = None
    correct: bool | None = None   # the oracle's verdict, when one was used
    reason: str | None = None     # why it cannot be chosen or rejected: empty, truncated, unparseable
    judge_output: str | None = None

    @property
    def eligible(self) -> bool:
        return self.reason is None and self.scores is not None


def select_pair(candidates: list[Candidate], min_accuracy_gap: float = 1.0,
                min_overall_gap: float = 1.0) -> tuple[Candidate, Candidate] | None:
    """(chosen, rejected): the best and worst eligible candidates by accuracy, then overall.
    None when fewer than two are eligible or the winner is not clear: its accuracy must lead by
    `min_accuracy_gap`, or (equal-ish accuracy) its overall mean by `min_overall_gap`."""
    pool = [c for c in candidates if c.eligible]
    if len(pool) < 2:
        return None
    ranked = sorted(pool, key=lambda c: rank_key(c.scores), reverse=True)  # stable: ties keep order
    chosen, rejected = ranked[0], ranked[-1]
    acc_gap = chosen.scores["accuracy"] - rejected.scores["accuracy"]
    overall_gap = overall(chosen.scores) - overall(rejected.scores)
    if acc_gap >= min_accuracy_gap or overall_gap >= min_overall_gap:
        return chosen, rejected
    return None


@dataclass
class PairVerdict:
    """A pairwise judgement in both orders. `winner` is "a" or "b" only when both orders agree;
    status is agree, tie, inconsistent (the orders disagree: position bias) or unparseable."""
    winner: str | None
    status: str
    orders: list[dict | None]  # parsed verdicts, order (a, b) then (b, a), sides named A/B as shown
    raw: list[str]


async def judge_pair(judge: Judge, prompt: str, a: str, b: str,
                     template: Template = JUDGE_TEMPLATE) -> PairVerdict:
    """Ask the judge about (a, b) and (b, a); a verdict only when both orders pick the same one."""
    raw = list(await asyncio.gather(
        judge(template.pair.format(prompt=prompt, response_a=a, response_b=b), guide=template.guide("pair")),
        judge(template.pair.format(prompt=prompt, response_a=b, response_b=a), guide=template.guide("pair"))))
    orders = [parse_verdict(t) for t in raw]
    if None in orders:
        return PairVerdict(None, "unparseable", orders, raw)
    # map each order's A/B back to a/b: in the swapped order, A is b
    picks = [{"A": "a", "B": "b"}.get(orders[0]["better"], "tie"),
             {"A": "b", "B": "a"}.get(orders[1]["better"], "tie")]
    if picks[0] != picks[1]:
        return PairVerdict(None, "inconsistent", orders, raw)
    if picks[0] == "tie":
        return PairVerdict(None, "tie", orders, raw)
    return PairVerdict(picks[0], "agree", orders, raw)


async def score_candidates(judge: Judge, prompt: str, candidates: list[Candidate], *,
                           reference: str | None = None, oracle=None, keep_truncated: bool = False,
                           template: Template = JUDGE_TEMPLATE) -> int:
    """Score every candidate in place (judge calls run concurrently); returns the calls made.
    Empty and (unless `keep_truncated`) cut-off responses are marked and not judged: a truncated
    chosen response would teach the model to stop mid-answer."""
    async def one(c: Candidate) -> int:
        if not c.text.strip():
            c.reason = "empty"
            return 0
        if c.finish_reason != "stop" and not keep_truncated:
            c.reason = "truncated"
            return 0
        c.judge_output = await judge(template.single.format(prompt=prompt, response=c.text),
                                     guide=template.guide("single"))
        c.scores = parse_scores(c.judge_output)
        if c.scores is None:
            c.reason = "unparseable"
        elif oracle is not None and reference is not None:
            c.correct = bool(oracle(c.text, reference))
            c.scores = {**c.scores, "accuracy": float(SCORE_MAX if c.correct else SCORE_MIN)}
        return 1
    return sum(await asyncio.gather(*(one(c) for c in candidates)))


# Why a prompt yields no pair; every prompt ends as exactly one pair or one of these.
NO_PAIR_REASONS = ("too_few_responses", "empty_responses", "truncated", "judge_unparseable",
                   "no_clear_winner", "identical", "position_inconsistent", "pairwise_tie",
                   "pairwise_unparseable", "pairwise_disagrees")


@dataclass
class Outcome:
    candidates: list[Candidate]
    pair: tuple[Candidate, Candidate] | None = None
    reason: str | None = None        # set exactly when pair is None
    decided_by: str | None = None    # "oracle" (accuracy from the oracle) or "judge"
    pairwise: PairVerdict | None = None
    judge_calls: int = 0
    parse_failures: int = 0          # judge answers that did not parse (single and pairwise)
    candidate_reasons: dict = field(default_factory=dict)


def shortfall_reason(candidates: list[Candidate]) -> str:
    """Why fewer than two candidates were eligible, naming the most telling failure."""
    seen = {c.reason for c in candidates}
    for reason, name in (("unparseable", "judge_unparseable"), ("truncated", "truncated"),
                         ("empty", "empty_responses")):
        if reason in seen:
            return name
    return "too_few_responses"


async def judge_prompt(judge: Judge, prompt: str, candidates: list[Candidate], *,
                       reference: str | None = None, oracle=None, keep_truncated: bool = False,
                       confirm_pairwise: bool = True, min_accuracy_gap: float = 1.0,
                       min_overall_gap: float = 1.0, template: Template = JUDGE_TEMPLATE) -> Outcome:
    """Score the candidates, select (chosen, rejected), confirm by a two-order pairwise judgement.
    A pair decided by the oracle (chosen correct, rejected wrong) needs no confirmation."""
    out = Outcome(candidates)
    out.judge_calls = await score_candidates(judge, prompt, candidates, reference=reference, oracle=oracle,
                                             keep_truncated=keep_truncated, template=template)
    out.parse_failures = sum(c.reason == "unparseable" for c in candidates)
    out.candidate_reasons = dict(Counter(c.reason or "ok" for c in candidates))
    if sum(c.eligible for c in candidates) < 2:
        out.reason = shortfall_reason(candidates)
        return out
    pair = select_pair(candidates, min_accuracy_gap, min_overall_gap)
    if pair is None:
        out.reason = "no_clear_winner"
        return out
    chosen, rejected = pair
    if chosen.ids == rejected.ids:
        out.reason = "identical"
        return out
    out.decided_by = "oracle" if chosen.correct and rejected.correct is False else "judge"
    if confirm_pairwise and out.decided_by == "judge":
        out.pairwise = await judge_pair(judge, prompt, chosen.text, rejected.text, template)
        out.judge_calls += 2
        out.parse_failures += sum(v is None for v in out.pairwise.orders)
        status = out.pairwise.status
        if status != "agree":
            out.reason = {"inconsistent": "position_inconsistent", "tie": "pairwise_tie",
                          "unparseable": "pairwise_unparseable"}[status]
            return out
        if out.pairwise.winner != "a":  # both orders prefer the one the scores ranked lower
            out.reason = "pairwise_disagrees"
            return out
    out.pair = pair
    return out
