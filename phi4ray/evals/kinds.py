r"""Item kinds: what makes an evaluation item of one kind valid, how it is shown, how it is graded.

A kind is a small class registered under its name in `REGISTRY`:
- `validate(item: dict) -> str | None`: the kind's rules on an item's fields (the item as
  `EvalItem.to_json()` writes it; `EvalItem` has checked id, prompt and field types first), an
  error naming the field, or None;
- `render(item) -> str`: the user message: the prompt, then the instruction that tells the model
  how to answer so that the grader can read it;
- `grade(item, response, sandbox_limits=None) -> Grade`: never raises on any response text
  (`response` is None when there is no text at all).
A new kind is one class plus `register_kind(MyKind())`; `EvalItem`, the JSONL loader, the runner
and the prompt rendering all dispatch through the registry.

The built-in kinds:
- `math`: the final answer (last \boxed{}, "answer is", last number) by `MathOracle`;
- `choice`: the chosen letter by `ChoiceOracle`;
- `code`: the fenced code plus the item's tests in the sandbox, the failure kind kept (tests
  failed, timeout, ...);
- `ifeval`: every check, strictly; the item counts when all pass, and the per-check verdicts go
  to the record's detail as `followed` (the runner reports instruction-level accuracy from them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from phi4ray.evals import ifeval
from phi4ray.verify.oracles import ChoiceOracle, MathOracle, extract_answer, extract_choice
from phi4ray.verify.sandbox import SandboxLimits, extract_code, run_python

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# the fields a kind may use; a kind must leave the ones it does not use empty
OPTIONAL_FIELDS = ("reference", "tests", "checks", "choices")
# why a sandboxed test run failed, in words for the records (SandboxResult.status -> reason)
SANDBOX_REASONS = {"error": "tests failed", "timeout": "timeout", "memory": "out of memory",
                   "cpu": "cpu time limit", "killed": "killed", "sandbox_error": "sandbox error"}


class Item(Protocol):
    """What a kind reads of an item: phi4ray.evals.schema.EvalItem (which imports this module to
    validate its items, so the kinds name the fields rather than the class)."""
    id: str
    kind: str
    prompt: str
    reference: str
    tests: str
    checks: tuple[dict, ...]
    choices: tuple[str, ...]
    meta: dict

    @property
    def letters(self) -> str: ...


@dataclass(frozen=True)
class Grade:
    correct: bool
    reason: str  # "correct", "wrong answer", "no answer found", "tests failed", "failed: title", ...
    detail: dict = field(default_factory=dict)


def is_empty(response: str | None) -> bool:
    return not isinstance(response, str) or not response.strip()


def choice_letters(choices: Sequence[str]) -> str:
    """The answer letters of a choice item: one per choice, A-D when no choices are given."""
    return LETTERS[:len(choices)] if choices else "ABCD"


class ItemKind:
    """The base of every kind: `name`, the OPTIONAL_FIELDS it `uses`, and the three methods."""
    name: str = ""
    uses: tuple[str, ...] = ()

    def where(self, item: dict) -> str:
        return f"(item {item.get('id')!r}, kind {self.name!r})"

    def validate(self, item: dict) -> str | None:
        """The unused fields are empty; subclasses check their own fields, then `return super().validate(item)`."""
        for name in OPTIONAL_FIELDS:
            if name not in self.uses and item.get(name):
                return f"{name} is not used by {self.name} items and must be empty {self.where(item)}"
        return None

    def instruction(self, item: Item) -> str:
        """The line after the prompt telling the model how to answer; "" for none."""
        return ""

    def render(self, item: Item) -> str:
        instruction = self.instruction(item)
        return f"{item.prompt}\n\n{instruction}" if instruction else item.prompt

    def grade(self, item: Item, response: str | None, sandbox_limits: SandboxLimits | None = None) -> Grade:
        raise NotImplementedError(f"kind {self.name!r} does not grade")


class MathKind(ItemKind):
    name, uses = "math", ("reference",)

    def validate(self, item: dict) -> str | None:
        if not str(item.get("reference") or "").strip():
            return f"reference must not be empty {self.where(item)}"
        return super().validate(item)

    def instruction(self, item: Item) -> str:
        return "Solve the problem step by step. Put the final answer in \\boxed{}."

    def grade(self, item: Item, response: str | None, sandbox_limits: SandboxLimits | None = None) -> Grade:
        if is_empty(response):
            return Grade(False, "empty response")
        found = extract_answer(response)
        if found is None:
            return Grade(False, "no answer found")
        ok = self.check(response, item.reference)
        return Grade(ok, "correct" if ok else "wrong answer", {"extracted": found})

    def check(self, response: str, reference: str) -> bool:
        """Whether the response's final answer is right (a subclass may check another way)."""
        return MathOracle()(response, reference)


class ChoiceKind(ItemKind):
    """A question with lettered options in the prompt; `choices` (optional) holds the options' texts."""
    name, uses = "choice", ("reference", "choices")

    def validate(self, item: dict) -> str | None:
        choices = item.get("choices") or []
        if choices and not (2 <= len(choices) <= 26 and all(isinstance(c, str) and c.strip() for c in choices)):
            return f"choices must be 2 to 26 non-empty strings {self.where(item)}"
        letters = choice_letters(choices)
        if item.get("reference") not in tuple(letters):
            return f"reference={item.get('reference')!r} must be one letter of {letters!r} {self.where(item)}"
        return super().validate(item)

    def instruction(self, item: Item) -> str:
        letters = item.letters
        listed = ", ".join(letters[:-1]) + " or " + letters[-1]
        return f'Answer with the letter of the correct option ({listed}), in the form "The answer is (X)".'

    def grade(self, item: Item, response: str | None, sandbox_limits: SandboxLimits | None = None) -> Grade:
        if is_empty(response):
            return Grade(False, "empty response")
        found = extract_choice(response, item.letters)
        if found is None:
            return Grade(False, "no answer found")
        ok = ChoiceOracle(item.letters)(response, item.reference)
        return Grade(ok, "correct" if ok else "wrong answer", {"extracted": found})


class CodeKind(ItemKind):
    """A function to write; `tests` run after the completion's code, exit status 0 passes. An item's
    `meta["preamble"]` (optional) runs before the code: HumanEval's prompt, whose imports and helper
    functions the completion may use, as HumanEval's own check runs prompt + completion + tests."""
    name, uses = "code", ("tests",)

    def validate(self, item: dict) -> str | None:
        if not str(item.get("tests") or "").strip():
            return f"tests must not be empty {self.where(item)}"
        if item.get("reference"):
            return f"reference must be empty {self.where(item)}: the verdict comes from the tests"
        return super().validate(item)

    def instruction(self, item: Item) -> str:
        return "Write the complete function, with any imports it needs, in a ```python code block."

    def grade(self, item: Item, response: str | None, sandbox_limits: SandboxLimits | None = None) -> Grade:
        # CodeOracle's check (fenced code + tests, exit 0 in the sandbox), keeping the run's status
        # so that a record says *why* it failed
        if is_empty(response):
            return Grade(False, "empty response")
        code = extract_code(response)
        if code is None:
            return Grade(False, "no code block")
        preamble = (item.meta or {}).get("preamble", "")
        result = run_python(preamble + "\n" + code + "\n" + item.tests, sandbox_limits or SandboxLimits())
        if result.ok:
            return Grade(True, "correct", {"status": "ok"})
        last = result.stderr.strip().splitlines()[-1:] or [""]
        return Grade(False, SANDBOX_REASONS.get(result.status, result.status),
                     {"status": result.status, "error": last[0][-300:]})


class IfevalKind(ItemKind):
    """A writing task whose instructions are the prompt itself; `checks` verify them (ifeval.CHECKS)."""
    name, uses = "ifeval", ("checks",)

    def validate(self, item: dict) -> str | None:
        checks = item.get("checks") or []
        if not checks:
            return f"checks must not be empty {self.where(item)}"
        if item.get("reference"):
            return f"reference must be empty {self.where(item)}: the verdict comes from the checks"
        for i, spec in enumerate(checks):
            try:
                ifeval.validate_check(spec)
            except ifeval.CheckError as e:
                return f"checks[{i}]: {e} {self.where(item)}"
        return super().validate(item)

    def grade(self, item: Item, response: str | None, sandbox_limits: SandboxLimits | None = None) -> Grade:
        empty = is_empty(response)
        followed = [False] * len(item.checks) if empty else ifeval.check_all(response, list(item.checks))
        failed = [spec["type"] for spec, ok in zip(item.checks, followed) if not ok]
        detail = {"checks": [spec["type"] for spec in item.checks], "followed": followed}
        reason = "empty response" if empty else ("failed: " + ", ".join(failed) if failed else "correct")
        return Grade(not failed, reason, detail)


# kind name -> kind; extended by register_kind (tests add theirs with monkeypatch.setitem)
REGISTRY: dict[str, ItemKind] = {k.name: k for k in (MathKind(), ChoiceKind(), CodeKind(), IfevalKind())}


def register_kind(kind: ItemKind) -> ItemKind:
    """Make items of `kind.name` loadable, renderable and gradable; returns the kind."""
    if not isinstance(kind, ItemKind) or not isinstance(kind.name, str) or not kind.name:
        raise ValueError(f"register_kind: {kind!r} must be an ItemKind with a non-empty name")
    REGISTRY[kind.name] = kind
    return kind


def kind_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def find_kind(name: object) -> ItemKind | None:
    return REGISTRY.get(name) if isinstance(name, str) else None


def get_kind(name: str) -> ItemKind:
    kind = find_kind(name)
    if kind is None:
        raise ValueError(f"unknown item kind {name!r}; known kinds: {list(REGISTRY)}")
    return kind


def render_prompt(item: Item) -> str:
    """The user message sent to /v1/chat/completions: the prompt, then the kind's instruction."""
    return get_kind(item.kind).render(item)


def render_completion(item: Item) -> str:
    """The same text as a raw prompt for /v1/completions (no chat template: the server adds none)."""
    return render_prompt(item) + "\n\n"
