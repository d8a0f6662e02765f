r"""Multi-agent prompting: two solvers with distinct roles and a referee, as a step of its own.

For each question (the plurality step's seeds: qa's kept questions, toy arithmetic, organic ones):

- solver A (`agents_solver_a`) solves it step by step; solver B (`agents_solver_b`) solves it by a
  different method than the obvious one (backwards, estimate then compute, checking each step), so
  the two are not one line of thought twice. Each ends with its final answer in \boxed{}, read by
  `extract_answer` as the plurality step reads its samples;
- the referee (`agents_referee`) reads the question and both solutions, names where they differ and
  which is right, and writes the final solution ending in \boxed{} (`parse_referee`);
- status: "solver_no_answer" when a solver's reply has no final answer (the referee is there to
  compare two answers; with one it would only restate it, and there is nothing to check its answer
  against), "referee_no_answer" when the referee's reply has no solution section with a final
  answer, "referee_disagrees_with_both" when its answer equals neither solver's (`same_answer`:
  a referee that overrules both has no independent support, the same reason plurality wants a
  majority), else "ok"; a failed teacher call is its "llm_error: ...".

A kept row's training document is the question and the referee's solution alone: it is written to
stand without the two solutions it judged. `solvers_agree` records whether the solvers' answers
were equal, `agrees_with` which solver(s) the referee sided with: rows where the solvers disagreed
are the ones the referee had to settle.

Questions advance in lock step, one call_all per role phase (both solvers, then the referee), so the
engine sees full batches.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa

from phi4ray.data.synth.llm import CallConfig, Engine, Request, Sampling, call_all, make_row, require, seed_value
from phi4ray.data.synth.plurality import final_answer, same_answer
from phi4ray.data.synth.templates import load_template
from phi4ray.verify.oracles import last_boxed

ROLES = ("solver_a", "solver_b", "referee")

SCHEMA = pa.schema([("seed_id", pa.string()), ("template_id", pa.string()), ("status", pa.string()),
                    ("question", pa.string()), ("solution_a", pa.string()), ("answer_a", pa.string()),
                    ("solution_b", pa.string()), ("answer_b", pa.string()), ("solvers_agree", pa.bool_()),
                    ("referee_text", pa.string()), ("referee_verdict", pa.string()),
                    ("referee_solution", pa.string()), ("referee_answer", pa.string()),
                    ("agrees_with", pa.string())])

# a label at a line's start, with the markdown dressing a model adds when it echoes the asked form
_VERDICT = re.compile(r"^[*#_ \t]*correct[*_ \t]*:[*_ \t]*(a|b|both|neither)\b", re.I | re.M)
_SOLUTION = re.compile(r"^[*#_ \t]*(?:final[ \t]+)?solution[*_ \t]*:[*_ \t]*\n?", re.I | re.M)


@dataclass(frozen=True)
class AgentsConfig:
    solver_a: Sampling = field(default_factory=lambda: Sampling(max_tokens=1024, temperature=0.7))
    solver_b: Sampling = field(default_factory=lambda: Sampling(max_tokens=1024, temperature=0.7))
    # the referee checks rather than explores: a low temperature keeps its verdict on the evidence
    referee: Sampling = field(default_factory=lambda: Sampling(max_tokens=1024, temperature=0.3))
    rel_tol: float = 1e-6  # same_answer's tolerance, as the plurality step's

    def __post_init__(self) -> None:
        require("AgentsConfig", self, {**{r: (isinstance(getattr(self, r), Sampling), "a Sampling") for r in ROLES},
                                       "rel_tol": (self.rel_tol >= 0, ">= 0")})


@dataclass(frozen=True)
class Referee:
    verdict: str | None   # a | b | both | neither: which solution the referee called right
    solution: str | None  # the text after its "Solution:" line


def parse_referee(text) -> Referee:
    """The referee's verdict and final solution; None for a part its reply lacks. The solution is
    looked for after the verdict, so a "Solution:" inside the differences is not taken for it."""
    if not isinstance(text, str):
        return Referee(None, None)
    verdict = _VERDICT.search(text)
    sol = _SOLUTION.search(text, verdict.end() if verdict else 0)
    solution = text[sol.end():].strip() if sol else ""
    return Referee(verdict.group(1).lower() if verdict else None, solution or None)


def answers_in_form(rows: list[dict]) -> tuple[int, int]:
    r"""(replies in the asked form, replies read) over every solver and referee reply the step read:
    a solver's with a \boxed{} answer, the referee's with its verdict and a solution ending in one."""
    read = in_form = 0
    for r in rows:
        for text in (r.get("solution_a"), r.get("solution_b")):
            if text is not None:
                read, in_form = read + 1, in_form + bool(last_boxed(text))
        if r.get("referee_text") is not None:
            ref = parse_referee(r["referee_text"])
            read, in_form = read + 1, in_form + bool(ref.verdict and ref.solution and last_boxed(ref.solution))
    return in_form, read


def judge(row: dict, referee_text: str, rel_tol: float = 1e-6) -> None:
    """Fill a row whose solvers both answered from the referee's reply: its parts, its answer, the
    solver(s) it agrees with, and the status. Pure."""
    ref = parse_referee(referee_text)
    answer = final_answer(ref.solution) if ref.solution else None
    sides = [s for s in ("a", "b") if same_answer(answer, row[f"answer_{s}"], rel_tol)]
    row.update(referee_text=referee_text, referee_verdict=ref.verdict, referee_solution=ref.solution,
               referee_answer=answer, agrees_with="both" if len(sides) == 2 else (sides[0] if sides else None),
               status="referee_no_answer" if not answer else "ok" if sides else "referee_disagrees_with_both")


async def agents_step(engine: Engine, questions: list[dict], config: AgentsConfig = AgentsConfig(),
                      call: CallConfig = CallConfig()) -> list[dict]:
    """Questions {"seed_id", "question"} -> one row of SCHEMA each, in order (see the module doc)."""
    tmpls = {r: load_template(f"agents_{r}") for r in ROLES}
    tid = "+".join(t.template_id for t in tmpls.values())
    rows, todo = [], []
    for q in questions:
        sid, text, bad = seed_value(q, "question")
        rows.append(make_row(SCHEMA, seed_id=sid, template_id=tid, status=bad, question=text))
        if bad is None:
            todo.append(rows[-1])

    def ask(role: str, row: dict, **fields: str) -> Request:
        t = tmpls[role]
        return Request.of(t.render(question=row["question"], **fields), getattr(config, role), guide=t.guide)

    outs = await call_all(engine, [ask(role, r) for role in ("solver_a", "solver_b") for r in todo], **call.kwargs())
    refereed = []
    for row, a, b in zip(todo, outs[:len(todo)], outs[len(todo):]):
        row.update(solution_a=a.text if a.ok else None, solution_b=b.text if b.ok else None)
        if not (a.ok and b.ok):
            row["status"] = a.error or b.error
            continue
        row.update(answer_a=final_answer(a.text), answer_b=final_answer(b.text))
        if not (row["answer_a"] and row["answer_b"]):
            row["status"] = "solver_no_answer"
            continue
        row["solvers_agree"] = same_answer(row["answer_a"], row["answer_b"], config.rel_tol)
        refereed.append(row)

    outs = await call_all(engine, [ask("referee", r, solution_a=r["solution_a"], solution_b=r["solution_b"])
                                   for r in refereed], **call.kwargs())
    for row, out in zip(refereed, outs):
        if out.ok:
            judge(row, out.text, config.rel_tol)
        else:
            row["status"] = out.error
    return rows
