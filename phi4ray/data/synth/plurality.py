r"""Plurality filter: N independent answers per question, majority vote, difficulty window.

Phi-4 keeps questions that its teacher answers neither always nor never the same way: if all N
samples agree the question teaches little (too easy), if no answer wins a clear share it is too
hard or ambiguous. For each question:

- the final answer of each sample is `extract_answer` (\boxed{} first); a sample without one,
  or with the template's placeholder ("\boxed{answer}"), joins no cluster but still counts in N;
- answers cluster by meaning: `math_equal` (0.5 = 1/2 = \frac{1}{2}, 1,000 = 1000, LaTeX
  dressing), or equal normalised text for non-math answers (case, punctuation, articles);
  greedy, each answer joins the first cluster whose first member it equals;
- status: "too_few_answers" (N < 2), "too_easy" (all N in one cluster), "no_consensus" (the
  largest cluster's share of N is not above `min_share`, or two clusters tie for largest),
  else "ok";
- the answer kept: the organic answer if present and equal to the majority ("organic"), else the
  majority's ("majority" when there was none, "majority_replaced_organic" when it disagreed).
  An organic answer may be a bare final answer, a solution with \boxed{} or one ending in GSM8K's
  "#### N".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa

from phi4ray.data.synth.llm import CallConfig, Engine, Request, Sampling, call_all, make_row, require, seed_value
from phi4ray.data.synth.templates import load_template
from phi4ray.verify.oracles import extract_answer, last_boxed, math_equal

SCHEMA = pa.schema([("seed_id", pa.string()), ("template_id", pa.string()), ("status", pa.string()),
                    ("question", pa.string()), ("answer", pa.string()), ("answer_source", pa.string()),
                    ("organic_answer", pa.string()), ("majority_answer", pa.string()),
                    ("majority_solution", pa.string()), ("majority_share", pa.float64()),
                    ("n_answers", pa.int32()), ("n_parsed", pa.int32()), ("cluster_sizes", pa.list_(pa.int32()))])


@dataclass(frozen=True)
class PluralityConfig:
    n_answers: int = 8
    min_share: float = 0.5  # the majority needs more than this share of the N answers
    sampling: Sampling = field(default_factory=lambda: Sampling(max_tokens=2048, temperature=0.8))
    rel_tol: float = 1e-6   # math_equal's tolerance for decimals standing for non-terminating values

    def __post_init__(self) -> None:
        require("PluralityConfig", self, {"n_answers": (self.n_answers >= 2, ">= 2 (one answer cannot disagree)"),
                                          "min_share": (0 <= self.min_share < 1, "in [0, 1)"),
                                          "rel_tol": (self.rel_tol >= 0, ">= 0")})


@dataclass(frozen=True)
class PluralityResult:
    status: str                     # ok | too_easy | no_consensus | too_few_answers
    answer: str | None              # the answer to keep (see answer_source)
    answer_source: str | None       # organic | majority | majority_replaced_organic
    majority_answer: str | None
    majority_solution: str | None   # the first sample in the majority cluster, whole
    majority_share: float
    cluster_sizes: tuple[int, ...]  # largest first
    extracted: tuple[str | None, ...]


_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
# sentence punctuation only: operators, brackets and a decimal point or comma between digits carry
# meaning ("x+1" is not "x-1", "1.5" is not "15")
_PUNCT = re.compile(r"[;:!?\"'`]|(?<!\d)[.,]|[.,](?!\d)")


def normalize_text(s: str) -> str:
    """Lower case, no sentence punctuation, no articles, single spaces: equality of non-math answers."""
    return " ".join(_ARTICLES.sub(" ", _PUNCT.sub(" ", s.lower())).split()) if isinstance(s, str) else ""


def same_answer(a: str | None, b: str | None, rel_tol: float = 1e-6) -> bool:
    if not a or not b:
        return False
    if math_equal(a, b, rel_tol):
        return True
    na = normalize_text(a)
    return bool(na) and na == normalize_text(b)


def cluster_answers(answers: list[str | None], rel_tol: float = 1e-6) -> list[list[int]]:
    """Indices of equal answers grouped, largest group first (ties: first formed first)."""
    clusters: list[list[int]] = []
    for i, a in enumerate(answers):
        if not a:
            continue
        for c in clusters:
            if same_answer(a, answers[c[0]], rel_tol):
                c.append(i)
                break
        else:
            clusters.append([i])
    return sorted(clusters, key=len, reverse=True)  # stable


# what a small teacher copies from the template's "\boxed{answer}" instead of answering: no vote
PLACEHOLDERS = frozenset({"answer", "the answer", "final answer", "your answer", "...", "…"})


def final_answer(text) -> str | None:
    """A sample's final answer (`extract_answer`), None for none or a template placeholder."""
    found = extract_answer(text) if isinstance(text, str) else None
    return None if found is None or found.strip().lower() in PLACEHOLDERS else found


def plurality_filter(question: str, organic_answer: str | None, answers: list[str], *,
                     min_share: float = 0.5, rel_tol: float = 1e-6) -> PluralityResult:
    """The verdict on one question from its N sampled solutions (see the module doc). Pure."""
    del question  # part of the signature for callers' clarity; the verdict depends on answers only
    extracted = tuple(final_answer(a) for a in answers)
    n = len(extracted)
    clusters = cluster_answers(list(extracted), rel_tol)
    sizes = tuple(len(c) for c in clusters)
    share = sizes[0] / n if sizes else 0.0
    major = clusters[0] if clusters else None
    majority = extracted[major[0]] if major else None
    solution = answers[major[0]] if major else None
    if n < 2:
        status = "too_few_answers"
    elif sizes and sizes[0] == n:
        status = "too_easy"
    elif not sizes or share <= min_share or (len(sizes) > 1 and sizes[1] == sizes[0]):
        status = "no_consensus"
    else:
        status = "ok"
    organic = organic_answer.strip() if isinstance(organic_answer, str) else ""
    organic = (last_boxed(organic) or organic.rsplit("####", 1)[-1]).strip()  # GSM8K: "... #### 6"
    if organic and same_answer(organic, majority, rel_tol):
        answer, source = organic, "organic"
    elif majority is None:
        answer, source = (organic or None), ("organic" if organic else None)
    else:
        answer, source = majority, ("majority_replaced_organic" if organic else "majority")
    return PluralityResult(status, answer, source, majority, solution, share, sizes, extracted)


async def plurality_step(engine: Engine, questions: list[dict], n: int | None = None,
                         config: PluralityConfig = PluralityConfig(), call: CallConfig = CallConfig()) -> list[dict]:
    """Questions {"seed_id", "question", optional "answer" (organic)} -> one row of SCHEMA each,
    in order; `n` (default config.n_answers) answers sampled per question in one request."""
    n = config.n_answers if n is None else n
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"plurality_step: n must be an int >= 2, got {n!r}")
    tmpl = load_template("answer")
    rows, jobs = [], []
    for q in questions:
        sid, text, bad = seed_value(q, "question")
        organic = q.get("answer") if isinstance(q, dict) else None
        row = make_row(SCHEMA, seed_id=sid, template_id=tmpl.template_id, status=bad, question=text,
                       organic_answer=organic if isinstance(organic, str) and organic.strip() else None)
        rows.append(row)
        if bad is None:
            jobs.append((row, Request.of(tmpl.render(question=text), config.sampling, n=n, guide=tmpl.guide)))
    outcomes = await call_all(engine, [r for _, r in jobs], **call.kwargs())
    for (row, _), out in zip(jobs, outcomes):
        if not out.ok:
            row["status"] = out.error
            continue
        res = plurality_filter(row["question"], row["organic_answer"], list(out.texts),
                               min_share=config.min_share, rel_tol=config.rel_tol)
        row.update(status=res.status, answer=res.answer, answer_source=res.answer_source,
                   majority_answer=res.majority_answer, majority_solution=res.majority_solution,
                   majority_share=res.majority_share, n_answers=len(res.extracted),
                   n_parsed=sum(a is not None for a in res.extracted),
                   cluster_sizes=list(res.cluster_sizes))
    return rows
