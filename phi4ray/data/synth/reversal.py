"""Instruction reversal for code, and execution validation of generated code.

Reversal: an organic code snippet -> a generated instruction (`code_to_instruction`) -> code
regenerated from that instruction alone (`instruction_to_code`). The pair kept is
(instruction, original code): organic code is the trustworthy half, and the regeneration is the
test of whether the instruction says enough to get that code back.

Fidelity of the regenerated code to the original, in [0, 1]:

    static   = (ast_similarity + signature_match) / 2
    fidelity = 0                       if there are tests and the regenerated code fails them
               0.5 + 0.5 * static      if there are tests and it passes them
               static                  if there are no tests

- tests: the seed's `tests` (assert statements run after the code), else the original's doctest
  examples, run against the regenerated definitions (`derive_tests`). Both codes run the same
  tests in the sandbox; the original must pass them (checked first, before any LLM call), or the
  tests say nothing and the seed is dropped ("original_fails_tests"). Passing shared tests is the strongest evidence of the same
  behaviour, so failing them is fatal and passing them is worth half the score by itself.
- ast_similarity: difflib ratio of the two programs' pre-order AST node-type sequences, with
  identifiers renamed by first appearance (v0, v1, ...; builtins and attribute names kept) and
  constants reduced to their type, docstrings dropped. Blind to naming and formatting, sensitive
  to control flow and data flow: it separates "the same algorithm" from "another algorithm
  that happens to pass weak tests", and it is the only behavioural proxy when there are no tests.
- signature_match: share of the original's top-level functions and classes that the
  regeneration defines with the same name and parameter shape. The tests (and any user) call that
  interface; an instruction that does not pin it down is not faithful.
With the default threshold 0.7, a regeneration that passes the tests needs static >= 0.4; one
without tests needs static >= 0.7.

Execution feedback (`fix_rounds`): a regeneration that fails the tests (or does not parse) is
sent back with what the tests printed, and the teacher's fix is judged again, up to `fix_rounds`
times; the row records the rounds it took (`fix_rounds`) and the last test output. A regeneration
is kept only once it passes. The test output can show expected values, so a fixed regeneration is
weaker evidence for the instruction than a first-try one: filter on `fix_rounds` where that matters.

Before any regeneration, an instruction that leaks the code (a fenced block, or more than
`max_leak_overlap` of its word 8-grams found in the code) is dropped: regenerating from a copy proves nothing.

`validate_code` / `validate_step` run generated code with its tests in the sandbox (status "ok"
only when the process exits 0). Sandbox runs block, so async code runs them in threads, at most
`sandbox_concurrency` at once.
"""
from __future__ import annotations

import ast
import asyncio
import builtins
import difflib
import doctest
import threading
from dataclasses import dataclass, field

import pyarrow as pa

from phi4ray.data.synth.llm import CallConfig, Engine, Request, Sampling, call_all, make_row, require, seed_value
from phi4ray.data.synth.rewrite import ngram_overlap
from phi4ray.data.synth.templates import load_template, strip_label
from phi4ray.verify.sandbox import SandboxLimits, extract_code, run_python

_BUILTINS = frozenset(dir(builtins))
_MAX_TOKENS = 3000  # hard cap on a shape: difflib is quadratic (2000 x 2000 tokens: ~1.7 s worst case)
FEEDBACK_CHARS = 1500  # test output a fix prompt shows: the end holds the failure, the prompt stays short

SCHEMA = pa.schema([("seed_id", pa.string()), ("template_id", pa.string()), ("status", pa.string()),
                    ("instruction", pa.string()), ("code", pa.string()), ("regenerated_code", pa.string()),
                    ("tests_source", pa.string()), ("tests_passed", pa.bool_()), ("ast_similarity", pa.float64()),
                    ("signature_match", pa.float64()), ("fidelity", pa.float64()), ("fix_rounds", pa.int64()),
                    ("test_feedback", pa.string())])

VALIDATION_SCHEMA = pa.schema([("seed_id", pa.string()), ("template_id", pa.string()), ("status", pa.string()),
                               ("code", pa.string()), ("tests", pa.string()), ("detail", pa.string())])


@dataclass(frozen=True)
class ReversalConfig:
    threshold: float = 0.7
    instruction: Sampling = field(default_factory=lambda: Sampling(max_tokens=512, temperature=0.3))
    code: Sampling = field(default_factory=lambda: Sampling(max_tokens=1024, temperature=0.2))
    max_leak_overlap: float = 0.3  # share of the instruction's word 8-grams that may occur in the code
    limits: SandboxLimits = field(default_factory=lambda: SandboxLimits(wall_s=10.0, cpu_s=5))
    sandbox_concurrency: int = 2   # sandbox runs at once (each is a process tree)
    # longer seeds are set aside: reversal is for function-sized code (a 30-line function is ~300
    # AST tokens), and the similarity is quadratic in this (1500 x 1500: ~1 s worst case)
    max_code_tokens: int = 1500
    # execution feedback: rounds of "here is what the tests printed, fix it" for a regeneration
    # that fails its tests or does not parse (0: judged once)
    fix_rounds: int = 2

    def __post_init__(self) -> None:
        require("ReversalConfig", self, {
            "fix_rounds": (self.fix_rounds >= 0, ">= 0"),
            "threshold": (0 <= self.threshold <= 1, "in [0, 1]"),
            "max_leak_overlap": (0 < self.max_leak_overlap <= 1, "in (0, 1]"),
            "sandbox_concurrency": (self.sandbox_concurrency >= 1, ">= 1"),
            "max_code_tokens": (1 <= self.max_code_tokens <= _MAX_TOKENS, f"in [1, {_MAX_TOKENS}]"),
        })


# --- static fidelity ------------------------------------------------------------------------------
# CPython 3.11's AST builder keeps its recursion depth in interpreter-wide state: two threads
# parsing at once (the sandbox validations run in asyncio.to_thread) failed here, on 3.11.7, with
# "SystemError: AST constructor recursion depth mismatch". Parsing is fast; one thread at a time.
_PARSE_LOCK = threading.Lock()


def parse_python(code: str) -> ast.Module | None:
    """The AST, or None for code that does not parse (or is too deep for the parser)."""
    try:
        with _PARSE_LOCK:
            return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _is_docstring(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def shape_tokens(tree: ast.AST) -> list[str]:
    """Pre-order node types, identifiers renamed by first appearance, constants as their type."""
    names: dict[str, str] = {}
    out: list[str] = []

    def name(ident: str) -> str:
        return ident if ident in _BUILTINS else names.setdefault(ident, f"v{len(names)}")

    stack = [tree]
    while stack and len(out) < _MAX_TOKENS:  # iterative: deep code must not hit the recursion limit
        node = stack.pop()
        if isinstance(node, (ast.expr_context, ast.boolop, ast.operator, ast.unaryop, ast.cmpop)):
            if not isinstance(node, ast.expr_context):
                out.append(type(node).__name__)  # Add vs Sub matters; Load vs Store is noise
            continue
        if _is_docstring(node):
            continue
        out.append(type(node).__name__)
        if isinstance(node, ast.Name):
            out.append(name(node.id))
        elif isinstance(node, ast.arg):
            out.append(name(node.arg))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append(name(node.name))
        elif isinstance(node, ast.Attribute):
            out.append(node.attr)
        elif isinstance(node, ast.Constant):
            out.append(type(node.value).__name__)
        stack.extend(reversed(list(ast.iter_child_nodes(node))))
    return out


def ast_similarity(a: str, b: str) -> float | None:
    """Similarity in [0, 1] of two programs' shapes (see the module doc); None if either does not parse."""
    ta, tb = parse_python(a), parse_python(b)
    if ta is None or tb is None:
        return None
    return difflib.SequenceMatcher(None, shape_tokens(ta), shape_tokens(tb), autojunk=False).ratio()


def _params(args: ast.arguments) -> tuple:
    return (len(args.posonlyargs) + len(args.args), tuple(sorted(a.arg for a in args.kwonlyargs)),
            args.vararg is not None, args.kwarg is not None)


def signatures(tree: ast.Module) -> dict[str, tuple]:
    """Top-level interface: function name -> parameter shape; class name -> its methods' shapes."""
    out: dict[str, tuple] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = ("def", _params(node.args))
        elif isinstance(node, ast.ClassDef):
            methods = sorted((m.name, _params(m.args)) for m in node.body
                             if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))
                             and (not m.name.startswith("_") or m.name == "__init__"))
            out[node.name] = ("class", tuple(methods))
    return out


def signature_match(original: str, regenerated: str) -> float | None:
    """Share of the original's top-level signatures the regeneration matches (1.0 if it has none)."""
    ta, tb = parse_python(original), parse_python(regenerated)
    if ta is None or tb is None:
        return None
    want, got = signatures(ta), signatures(tb)
    return sum(got.get(k) == v for k, v in want.items()) / len(want) if want else 1.0


def fidelity(ast_sim: float, sig_match: float, tests_passed: bool | None) -> float:
    """The score defined in the module doc."""
    static = (ast_sim + sig_match) / 2
    if tests_passed is None:
        return static
    return 0.5 + 0.5 * static if tests_passed else 0.0


# --- tests and the sandbox ------------------------------------------------------------------------
_DOCTEST_RUNNER = """
import doctest as _doctest
_examples = [_doctest.Example(s, w, e) for s, w, e in {examples!r}]
_runner = _doctest.DocTestRunner(optionflags=_doctest.ELLIPSIS | _doctest.NORMALIZE_WHITESPACE)
_runner.run(_doctest.DocTest(_examples, dict(globals()), "derived_tests", None, 0, None))
raise SystemExit(1 if _runner.failures else 0)
"""


def derive_tests(code: str) -> str | None:
    """A test script from the doctest examples in `code`'s docstrings, to run after any code
    defining the same names; None when there are none (or the code does not parse)."""
    tree = parse_python(code)
    if tree is None:
        return None
    examples = []
    parser = doctest.DocTestParser()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node, clean=True)
            try:
                found = parser.get_examples(doc) if doc else []
            except ValueError:  # malformed doctest: no tests from it
                found = []
            examples += [(e.source, e.want, e.exc_msg) for e in found]
    return _DOCTEST_RUNNER.format(examples=examples) if examples else None


@dataclass(frozen=True)
class Validation:
    status: str   # ok | no_code | syntax_error | tests_failed | timeout | memory | cpu | killed | sandbox_error
    detail: str   # the last line of stderr, or what was wrong
    output: str = ""  # the tail of what the run printed (doctest reports go to stdout): fix prompts show it

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def validate_code(code: str, tests: str, limits: SandboxLimits = SandboxLimits()) -> Validation:
    """Run `code` (plain or a model reply with a fenced block) followed by `tests` in the sandbox.
    Blocks (up to limits.wall_s): from async code call it in a thread."""
    if not isinstance(code, str) or not isinstance(tests, str):
        return Validation("no_code", "code and tests must be strings")
    body = extract_code(code)
    body = code if body is None else body
    if not body.strip():
        return Validation("no_code", "empty code")
    if parse_python(body) is None:
        return Validation("syntax_error", "code does not parse", syntax_error(body))
    if parse_python(tests) is None:
        return Validation("syntax_error", "tests do not parse")
    res = run_python(body + "\n\n" + tests + "\n", limits)
    last = (res.stderr.strip().splitlines() or [""])[-1][:300]
    status = {"ok": "ok", "error": "tests_failed"}.get(res.status, res.status)
    printed = (res.stdout.strip() + "\n" + res.stderr.strip()).strip()
    return Validation(status, last, printed[-FEEDBACK_CHARS:] or f"the run ended: {status}")


def syntax_error(code: str) -> str:
    """What the compiler says about code that does not parse."""
    try:
        compile(code, "<code>", "exec")
    except (SyntaxError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return "the code does not parse"


class _Sandbox:
    """Sandbox runs from async code: in threads, at most `concurrency` at once."""

    def __init__(self, concurrency: int, limits: SandboxLimits):
        self.sem, self.limits = asyncio.Semaphore(concurrency), limits

    async def validate(self, code: str, tests: str) -> Validation:
        async with self.sem:
            return await asyncio.to_thread(validate_code, code, tests, self.limits)


# --- steps -----------------------------------------------------------------------------------------
def _leaks(instruction: str, code: str, max_overlap: float) -> bool:
    return "```" in instruction or ngram_overlap(instruction, code, 8) > max_overlap


async def _judge(sandbox: _Sandbox, row: dict, tests: str | None, config: ReversalConfig) -> None:
    """Fill the fidelity columns and the status of a row holding both codes."""
    original, regen = row["code"], row["regenerated_code"]
    row["ast_similarity"] = ast_similarity(original, regen)
    row["signature_match"] = signature_match(original, regen)
    if row["ast_similarity"] is None:
        row["status"], row["test_feedback"] = "syntax_error", syntax_error(regen)
        return
    if tests is not None:
        v = await sandbox.validate(regen, tests)
        row["tests_passed"], row["test_feedback"] = v.ok, None if v.ok else v.output
    row["fidelity"] = fidelity(row["ast_similarity"], row["signature_match"], row["tests_passed"])
    if row["tests_passed"] is False:
        row["status"] = "regenerated_fails_tests"
    else:
        row["status"] = "ok" if row["fidelity"] >= config.threshold else "low_fidelity"


async def reversal_step(engine: Engine, seeds: list[dict], config: ReversalConfig = ReversalConfig(),
                        call: CallConfig = CallConfig()) -> list[dict]:
    """Seeds {"seed_id", "code", optional "tests"} -> one row of SCHEMA each, in seed order."""
    to_instr, to_code = load_template("code_to_instruction"), load_template("instruction_to_code")
    fix = load_template("fix_code")
    tid = f"{to_instr.template_id}+{to_code.template_id}" + (f"+{fix.template_id}" if config.fix_rounds else "")
    sandbox = _Sandbox(config.sandbox_concurrency, config.limits)
    rows, live, tests = [], [], {}
    for seed in seeds:
        sid, code, bad = seed_value(seed, "code")
        tree = parse_python(code) if bad is None else None
        if bad is None and tree is None:
            bad = "bad_seed: code does not parse"
        elif bad is None and len(shape_tokens(tree)) > config.max_code_tokens:
            bad = f"bad_seed: code longer than {config.max_code_tokens} AST tokens"
        row = make_row(SCHEMA, seed_id=sid, template_id=tid, status=bad, code=code)
        rows.append(row)
        if bad is None:
            given = seed.get("tests")
            given = given if isinstance(given, str) and given.strip() else None
            tests[id(row)] = given or derive_tests(code)
            row["tests_source"] = "given" if given else "doctest" if tests[id(row)] else "none"
            live.append(row)

    # tests the original fails say nothing about a regeneration: settle that before paying the LLM
    checks = await asyncio.gather(*(sandbox.validate(r["code"], tests[id(r)]) for r in live if tests[id(r)]))
    for row, v in zip([r for r in live if tests[id(r)]], checks):
        if not v.ok:
            row["status"] = f"original_fails_tests: {v.status}"
    live = [r for r in live if r["status"] is None]

    outs = await call_all(engine, [Request.of(to_instr.render(code=r["code"]), config.instruction, guide=to_instr.guide)
                                   for r in live],
                          **call.kwargs())
    regen = []
    for row, out in zip(live, outs):
        instruction = strip_label(out.text, "Instruction") if out.ok else ""
        row["instruction"] = instruction or None
        if not out.ok:
            row["status"] = out.error
        elif not instruction:
            row["status"] = "empty_instruction"
        elif _leaks(instruction, row["code"], config.max_leak_overlap):
            row["status"] = "instruction_leaks_code"
        else:
            regen.append(row)

    outs = await call_all(engine, [Request.of(to_code.render(instruction=r["instruction"]), config.code, guide=to_code.guide)
                                   for r in regen], **call.kwargs())
    judged = []
    for row, out in zip(regen, outs):
        if not out.ok:
            row["status"] = out.error
            continue
        code = _reply_code(out.text)
        if code is None:
            row["status"] = "no_code"
            continue
        row["regenerated_code"] = code
        judged.append(row)
    await asyncio.gather(*(_judge(sandbox, r, tests[id(r)], config) for r in judged))
    await _fix(engine, fix, sandbox, judged, tests, config, call)
    return rows


def _reply_code(text: str) -> str | None:
    """The code of a reply: its fenced block, or the whole reply where that parses as Python."""
    code = extract_code(text)
    code = text if code is None and parse_python(text) is not None else code
    return code if code and code.strip() else None


async def _fix(engine: Engine, fix, sandbox: _Sandbox, rows: list[dict], tests: dict, config: ReversalConfig,
               call: CallConfig) -> None:
    """The execution-feedback loop: rows whose regeneration has tests and failed them (or does not
    parse) get up to `config.fix_rounds` fixes, each judged again. A failed call or a reply without
    code ends a row's loop with the judgement it had."""
    for r in rows:
        r["fix_rounds"] = 0
    todo = [r for r in rows if tests[id(r)] and r["status"] in ("regenerated_fails_tests", "syntax_error")]
    for _ in range(config.fix_rounds):
        if not todo:
            return
        outs = await call_all(engine, [Request.of(fix.render(instruction=r["instruction"], code=r["regenerated_code"],
                                                             feedback=r["test_feedback"]), config.code, guide=fix.guide)
                                       for r in todo], **call.kwargs())
        fixed = []
        for row, out in zip(todo, outs):
            code = _reply_code(out.text) if out.ok else None
            if code is not None:
                row["regenerated_code"], row["fix_rounds"] = code, row["fix_rounds"] + 1
                fixed.append(row)
        await asyncio.gather(*(_judge(sandbox, r, tests[id(r)], config) for r in fixed))
        todo = [r for r in fixed if r["status"] in ("regenerated_fails_tests", "syntax_error")]


async def validate_step(items: list[dict], config: ReversalConfig = ReversalConfig()) -> list[dict]:
    """Execution validation: items {"seed_id", "code", "tests", optional "template_id" (carried
    over from the step that generated them)} -> one row of VALIDATION_SCHEMA each, in order."""
    sandbox = _Sandbox(config.sandbox_concurrency, config.limits)

    async def one(item) -> dict:
        sid, code, bad = seed_value(item, "code")
        tests = item.get("tests") if isinstance(item, dict) else None
        if bad is None and not (isinstance(tests, str) and tests.strip()):
            bad = "bad_seed: no tests"
        row = make_row(VALIDATION_SCHEMA, seed_id=sid, status=bad, code=code, tests=tests,
                       template_id=item.get("template_id") if isinstance(item, dict) else None)
        if bad is None:
            v = await sandbox.validate(code, tests)
            row["status"], row["detail"] = v.status, v.detail
        return row

    return list(await asyncio.gather(*(one(i) for i in items)))
