"""LLM annotation of documents for the quality classifier (FineWeb-Edu style), and its fallbacks.

`annotation_prompt` renders a versioned template; `parse_annotation` reads a judge's reply (None
when it cannot, never raises) and stamps the template id and version on the result, so annotations
made with different prompts are never pooled unknowingly. `labels_from_annotations` turns them into
keep/drop labels. `annotate` gets the annotations from the configured annotator: an
OpenAI-compatible endpoint, a judge model served on the run's fleet, or the passage heuristics
(`heuristic_annotations`, the weak-label fallback for a run with no judge yet).
"""
from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass

from phi4ray.data.curate.passages import passage_scores, segment_passages
from phi4ray.serve.endpoint import EndpointConfig, EndpointError, OpenAIEndpoint

__all__ = ["AnnotationTemplate", "ANNOTATION_TEMPLATE_V1", "annotation_prompt", "parse_annotation",
           "labels_from_annotations", "heuristic_annotations", "judge_annotations", "annotate",
           "ANNOTATOR_APP", "NO_KEY_ENV"]

ANNOTATOR_APP = "phi4ray-annotator"  # the fleet app (and model id) of annotator=fleet
NO_KEY_ENV = "PHI4RAY_NO_KEY"        # our fleet without an API key: send none (not the user's OpenAI key)

SCORE_MIN, SCORE_MAX = 0, 5


@dataclass(frozen=True)
class AnnotationTemplate:
    id: str       # both recorded on every annotation: change the wording, bump the version
    version: str
    text: str     # placeholder {document}


ANNOTATION_TEMPLATE_V1 = AnnotationTemplate(
    id="phi4ray-edu-annotation",
    version="1",
    text=(
        "Below is an extract from a document. Rate it on two scales, each an integer from 0 to 5.\n\n"
        "Educational value: how useful it is for teaching at primary school to university level.\n"
        "0 = no educational value: advertising, navigation, spam, chit-chat or broken text.\n"
        "1 = some basic information relevant to an educational topic, mixed with unrelated content.\n"
        "2 = touches on educational elements but is superficial or disorganised.\n"
        "3 = appropriate for educational use and introduces key concepts coherently.\n"
        "4 = highly relevant and beneficial, like a chapter of a textbook or a tutorial.\n"
        "5 = outstanding: clear, thorough, with exercises or worked examples.\n\n"
        "Reasoning depth: how much step-by-step reasoning it shows.\n"
        "0 = none: facts, lists or fragments without any argument.\n"
        "1 = occasional explanations of why something holds.\n"
        "3 = explanations that derive conclusions from premises in several steps.\n"
        "5 = rigorous multi-step reasoning: proofs, derivations, worked solutions.\n\n"
        "[Document]\n{document}\n[End of Document]\n\n"
        "Answer with exactly these three lines and nothing else:\n"
        "Justification: <one or two sentences>\n"
        "Educational value: N\n"
        "Reasoning depth: N"
    ),
)

_MAX_REPLY = 20_000  # reply text past this is junk; bounds the regex work
_DRESS = r"^[ \t>*#_-]*"
_NUM = (r"(?:[ \t]+score)?(?:[ \t]*\([^)\n]{0,20}\))?[ \t*_]*(?::|=|-|is)[ \t*_]*"
        r"(-?\d{1,3}(?:\.\d+)?)(?:[ \t]*(?:/|out[ \t]+of)[ \t]*(\d{1,3}))?")
_EDU = re.compile(_DRESS + r"educational(?:[ \t_-]+value)?" + _NUM, re.I | re.M)
_REASON = re.compile(_DRESS + r"reasoning(?:[ \t_-]+depth)?" + _NUM, re.I | re.M)
_WHY = re.compile(_DRESS + r"justification[ \t*_]*[:=-][ \t*_]*([^\n]*)", re.I | re.M)


def annotation_prompt(text: str, max_chars: int = 3000,
                      template: AnnotationTemplate = ANNOTATION_TEMPLATE_V1) -> str:
    """The judge prompt for one document, cut to `max_chars` at a space (marked "[...]")."""
    if not isinstance(text, str):
        raise TypeError(f"annotation_prompt needs a str document, got {type(text).__name__}")
    if max_chars < 1:
        raise ValueError(f"max_chars={max_chars!r} must be >= 1")
    text = text.strip()
    if len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars + 1)
        text = text[:cut if cut > max_chars // 2 else max_chars].rstrip() + " [...]"
    return template.text.format(document=text)


def _last_score(pattern: re.Pattern, text: str) -> float | None:
    found = list(pattern.finditer(text))  # the last one wins: a judge may think aloud first
    m = found[-1] if found else None
    if m is None:
        return None
    value, scale = float(m.group(1)), m.group(2)
    if scale is not None and int(scale) not in (0, SCORE_MAX):
        value = value * SCORE_MAX / int(scale)  # "8/10" is 4 on this scale
    return float(min(SCORE_MAX, max(SCORE_MIN, value)))


def parse_annotation(reply, template: AnnotationTemplate = ANNOTATION_TEMPLATE_V1) -> dict | None:
    """{"educational_value", "reasoning_depth" (floats in [0, 5]), "justification", "template_id",
    "template_version"} from a judge reply; None unless both scores are found.

    Tolerates case, markdown dressing, text around the lines, "4/5", "8/10" (rescaled), "4 out of
    5", "Educational value score (0-5): 4"; out-of-range values are clipped to [0, 5].
    """
    if not isinstance(reply, str):
        return None
    reply = reply[-_MAX_REPLY:]
    edu, reason = _last_score(_EDU, reply), _last_score(_REASON, reply)
    if edu is None or reason is None:
        return None
    why = [m.group(1).strip(" \t*_") for m in _WHY.finditer(reply)]
    return {"educational_value": edu, "reasoning_depth": reason, "justification": why[-1][:1000] if why else "",
            "template_id": template.id, "template_version": template.version}


def labels_from_annotations(annotations, threshold: float = 3) -> list[int | None]:
    """Binary labels for the classifier: 1 (keep) when educational value >= threshold, else 0 (drop).

    Threshold 3 is FineWeb-Edu's: "introduces key concepts coherently" and up. One label per
    annotation, in order; None where the annotation is missing or unparsed (parse_annotation gave
    None), which train_classifier counts as unlabelled and leaves out.
    """
    out: list[int | None] = []
    for a in annotations:
        v = a.get("educational_value") if isinstance(a, dict) else None
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        out.append(int(v >= threshold) if ok else None)
    return out



# --- annotators -----------------------------------------------------------------------------------
def heuristic_annotations(texts: list[str]) -> list[dict]:
    """Weak labels without a judge: the passage heuristics, scaled to the judge's 0-5 scales."""
    out = []
    for text in texts:
        scores = passage_scores(segment_passages(text)) or [{"factual": 0.0, "reasoning": 0.0}]
        fact = sum(s["factual"] for s in scores) / len(scores)
        reas = sum(s["reasoning"] for s in scores) / len(scores)
        out.append({"educational_value": 5 * (fact + reas) / 2, "reasoning_depth": 5 * reas,
                    "justification": "passage heuristics", "template_id": "heuristic", "template_version": "1"})
    return out


async def judge_annotations(texts: list[str], url: str, name: str, api_key_env: str,
                            max_tokens: int) -> list[dict | None]:
    """One judge call per text, all in flight together; a failed call is None (unannotated)."""
    async with OpenAIEndpoint(EndpointConfig(base_url=url, model=name, api_key_env=api_key_env,
                                             timeout_s=600)) as judge:
        async def one(text: str):
            try:
                reply = await judge.chat([{"role": "user", "content": annotation_prompt(text)}],
                                         max_tokens=max_tokens, temperature=0.0)
            except EndpointError:
                return None  # counted as unannotated; the classifier trains on the rest
            return parse_annotation(reply["choices"][0]["message"]["content"])

        return list(await asyncio.gather(*(one(t) for t in texts)))


def annotate(texts: list[str], quality, fleet=None, fleet_api_key_env: str = "") -> list[dict | None]:
    """Annotations of `texts` by `quality.annotator` (a phi4ray.data.curate.config.QualityConfig).
    annotator=fleet serves `quality.model` on `fleet` (the run context's, actors.serve.fleet.Fleet) for
    the duration of the call; `fleet_api_key_env` is the fleet's API key variable ("" for none)."""
    if quality.annotator == "heuristic":
        return heuristic_annotations(texts)
    if quality.annotator == "endpoint":
        return asyncio.run(judge_annotations(texts, quality.url, quality.name, quality.api_key_env,
                                             quality.judge_max_tokens))
    if fleet is None:
        raise ValueError("curate.quality.annotator=fleet needs the run's fleet")
    app = fleet.start({ANNOTATOR_APP: quality.model}, app=ANNOTATOR_APP)
    try:
        return asyncio.run(judge_annotations(texts, app.url, ANNOTATOR_APP, fleet_api_key_env or NO_KEY_ENV,
                                             quality.judge_max_tokens))
    finally:
        fleet.release(app)
