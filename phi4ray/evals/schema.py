"""The evaluation item and suite: fields, and the checks every item passes before it is used.

An item's kind (`phi4ray.evals.kinds`) says which optional fields it needs and how it is shown
and graded; the checks here are the ones common to every kind. A bad item raises `SuiteError`
naming the field (the JSONL loader adds file:line).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from phi4ray.evals.kinds import choice_letters, find_kind, kind_names
from phi4ray.run.errors import ConfigError

ITEM_FIELDS = ("id", "kind", "prompt", "reference", "tests", "checks", "choices", "meta")
SUITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # a suite name is also a file name


class SuiteError(ConfigError):
    """A suite or item that cannot be evaluated; the message names the file:line and field."""


@dataclass(frozen=True)
class EvalItem:
    id: str
    kind: str  # a name in phi4ray.evals.kinds.REGISTRY
    # the user message without the kind's answer instruction (see kinds.render_prompt); a choice
    # item's prompt holds the question *and* its lettered options, as the model is to read them
    prompt: str
    reference: str = ""  # math: the answer; choice: the correct letter; code / ifeval: ""
    tests: str = ""  # code: Python run after the completion's code; exit status 0 passes
    checks: tuple[dict, ...] = ()  # ifeval: {"type": ..., params} specs, see ifeval.CHECKS
    choices: tuple[str, ...] = ()  # choice (optional): the options' texts, in letter order
    meta: dict = field(default_factory=dict)  # free-form, JSON-able (generator values, sources)

    def __post_init__(self) -> None:
        # lists from JSON become tuples: an item is a value and must not change under the runner
        object.__setattr__(self, "checks", tuple(self.checks) if isinstance(self.checks, list) else self.checks)
        object.__setattr__(self, "choices", tuple(self.choices) if isinstance(self.choices, list) else self.choices)
        problem = self._problem()
        if problem:
            raise SuiteError(problem)

    def _problem(self) -> str | None:
        if not isinstance(self.id, str) or not self.id.strip() or len(self.id) > 200 or "\n" in self.id:
            return f"id={self.id!r} must be a non-empty one-line string of at most 200 characters"
        kind = find_kind(self.kind)
        if kind is None:
            return f"kind={self.kind!r} must be one of {kind_names()}"
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            return f"prompt must be a non-empty string (item {self.id!r})"
        for name in ("reference", "tests"):
            if not isinstance(getattr(self, name), str):
                return f"{name} must be a string, got {type(getattr(self, name)).__name__} (item {self.id!r})"
        if not isinstance(self.checks, tuple) or not isinstance(self.choices, tuple):
            return f"checks and choices must be lists (item {self.id!r})"
        if not isinstance(self.meta, dict):
            return f"meta must be an object, got {type(self.meta).__name__} (item {self.id!r})"
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as e:
            return f"meta is not JSON-serializable: {e} (item {self.id!r})"
        return kind.validate(self.to_json())

    @property
    def letters(self) -> str:
        """The answer letters of a choice item: one per choice, A-D when no choices are given."""
        return choice_letters(self.choices)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "prompt": self.prompt, "reference": self.reference,
                "tests": self.tests, "checks": list(self.checks), "choices": list(self.choices), "meta": self.meta}

    @classmethod
    def from_json(cls, obj: Any) -> EvalItem:
        if not isinstance(obj, dict):
            raise SuiteError(f"an item must be a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - set(ITEM_FIELDS) - {"suite", "version"})
        if unknown:
            raise SuiteError(f"unknown field(s) {unknown}; an item has {list(ITEM_FIELDS)}")
        missing = [f for f in ("id", "kind", "prompt") if f not in obj]
        if missing:
            raise SuiteError(f"missing field(s) {missing}")
        return cls(**{f: obj[f] for f in ITEM_FIELDS if f in obj})


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    items: tuple[EvalItem, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        if not isinstance(self.name, str) or not SUITE_NAME.fullmatch(self.name):
            raise SuiteError(f"suite name={self.name!r} must be 1-100 characters of letters, digits, '_', '.', '-'"
                             " (it names the results file)")
        if not isinstance(self.version, str) or not self.version.strip():
            raise SuiteError(f"suite {self.name!r}: version={self.version!r} must be a non-empty string")
        if not self.items:
            raise SuiteError(f"suite {self.name!r} has no items")
        seen: set[str] = set()
        for item in self.items:
            if item.id in seen:
                raise SuiteError(f"suite {self.name!r}: item id {item.id!r} appears twice")
            seen.add(item.id)
