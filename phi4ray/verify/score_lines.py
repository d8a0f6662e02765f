"""The grammar of a model's "criterion: N" score lines, shared by the LLM judge (phi4ray.posttrain.judge)
and self-revision's critique (phi4ray.data.synth.revise)."""
from __future__ import annotations

SCORE_MIN, SCORE_MAX = 1, 10

# Lines may carry markdown dressing ("**Accuracy**: 8", "- style = 7/10"); the last occurrence
# wins, so a judge that thinks aloud before its final lines still parses.
LINE_DRESS = r"^[ \t>*#_-]*"
# (one optional group, then one class: no two adjacent overlapping repeats, so a long blank run
# costs linear time, not quadratic)
SCORE_VALUE = r"[ \t*_]*[:=][ \t*_]*(\d{1,2}(?:\.\d+)?)(?:[ \t]*/[ \t]*10)?[ \t\r*_.]*$"


def score_value(value: str) -> float | None:
    v = float(value)
    return v if SCORE_MIN <= v <= SCORE_MAX else None
