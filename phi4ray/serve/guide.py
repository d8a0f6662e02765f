"""Structured output: a guide constrains what a sampler may write, so a small model's answer
always has the form its parser reads (a score line, a verdict, a code block).

A guide is exactly one of a regex, a list of choices or a JSON schema. It travels as a plain dict
(`{"regex": ...}`, `{"choice": [...]}`, `{"json": {...}}`): the token-level `SampleRequest`
carries it to the fleet's vLLM engines (their `StructuredOutputsParams`, decoded by xgrammar on CPU
and GPU alike), and an OpenAI-compatible endpoint gets it in its request body (`response_format`
for a JSON schema, which OpenAI's API and vLLM's server both take; vLLM's `structured_outputs`
for a regex or choices, which OpenAI's API does not have).

The synthesis templates and the judge use regexes: a JSON schema's grammar allows any whitespace,
and a small model pads it (the tiny random model wrote 48 blank lines into a 24-token answer).
"""
from __future__ import annotations

import json
import re
from typing import Any

from phi4ray.serve.request_limits import SamplingError

GUIDE_KINDS = ("regex", "choice", "json")
MAX_GUIDE_CHARS = 20_000  # a guide compiles into the engine's grammar: bound the work a request can ask for


def check_guide(guide: Any) -> dict | None:
    """The guide if it is valid (None passes), else SamplingError naming what is wrong."""
    if guide is None:
        return None
    if not isinstance(guide, dict) or len(guide) != 1 or next(iter(guide)) not in GUIDE_KINDS:
        raise SamplingError(f"guide must be one of {{'regex': str}}, {{'choice': [str]}}, {{'json': schema}}, "
                            f"got {str(guide)[:120]!r}", "guide")
    kind, value = next(iter(guide.items()))
    if kind == "regex":
        if not isinstance(value, str) or not value:
            raise SamplingError("guide.regex must be a non-empty string", "guide")
        try:
            re.compile(value)
        except re.error as e:
            raise SamplingError(f"guide.regex does not compile: {e}", "guide") from None
    elif kind == "choice":
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(c, str) and c for c in value):
            raise SamplingError("guide.choice must be a non-empty list of non-empty strings", "guide")
    elif not isinstance(value, dict):
        raise SamplingError("guide.json must be a JSON schema object", "guide")
    if len(json.dumps(value)) > MAX_GUIDE_CHARS:
        raise SamplingError(f"guide is longer than {MAX_GUIDE_CHARS} characters", "guide")
    return guide


def endpoint_body(guide: dict | None) -> dict:
    """What an OpenAI-compatible request body adds for `guide` (see the module doc)."""
    if guide is None:
        return {}
    kind, value = next(iter(guide.items()))
    if kind == "json":
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": value}}}
    return {"structured_outputs": {kind: list(value) if kind == "choice" else value}}
