"""Q&A extraction from organic text: deduction chains in a passage -> question/answer pairs.

The `qa_extract` template asks for blocks of "Question: / Reasoning: / Answer:"; `parse_qa_pairs`
reads them leniently (markdown dressing, numbering, "Q:"/"A:", multi-line fields, any order of
blocks) because the form is asked for, not guaranteed. Then every pair must earn its place:

- supported: an answer the passage does not back is a hallucination that would be trained in as
  fact. The reasoning counts as support only when it is grounded (at least `min_chain_grounding`
  of its content words occur in the passage), since the model writes the reasoning too. Every
  number in the answer must occur (by value: 1,000 = 1000, 0.5 = 1/2) in the passage or the
  grounded reasoning, and at least `min_answer_support` of the answer's content words must; an
  answer with neither (a bare "yes") needs grounded reasoning. Otherwise "unsupported_answer".
- not a duplicate: within one seed, a question whose content words overlap an earlier kept one's
  by Jaccard >= `dup_jaccard` is "duplicate_question". Dedupe across seeds belongs to the Ray
  stage (group by `question_key`): here a row depends on its own seed only, so reruns with other
  batch boundaries give the same rows.

Rows: one per parsed pair (status "ok" or why it was dropped), or one row for a seed that gave no
pair at all ("no_pairs", an LLM failure, a bad seed), so every seed shows up.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa

from phi4ray.data.synth.llm import CallConfig, Engine, Request, Sampling, call_all, make_row, require, seed_value
from phi4ray.data.synth.rewrite import words
from phi4ray.data.synth.templates import load_template
from phi4ray.verify.oracles import parse_number

SCHEMA = pa.schema([("seed_id", pa.string()), ("template_id", pa.string()), ("status", pa.string()),
                    ("pair_index", pa.int32()), ("question", pa.string()), ("reasoning", pa.string()),
                    ("answer", pa.string()), ("source", pa.string())])

_STOP = frozenset("""a an and are as at be been being but by can could did do does for from had has have how if in
into is it its may might more most must no not of on or so such than that the their them then there these they
this those to was were what when where which while who whom why will with would yes you your""".split())


@dataclass(frozen=True)
class QAConfig:
    sampling: Sampling = field(default_factory=lambda: Sampling(max_tokens=1536, temperature=0.3))
    max_pairs: int = 5
    min_answer_support: float = 0.5   # share of the answer's content words found in the support
    min_chain_grounding: float = 0.5  # share of the reasoning's content words found in the passage
    dup_jaccard: float = 0.8

    def __post_init__(self) -> None:
        require("QAConfig", self, {
            "max_pairs": (self.max_pairs >= 1, ">= 1"),
            "min_answer_support": (0 <= self.min_answer_support <= 1, "in [0, 1]"),
            "min_chain_grounding": (0 <= self.min_chain_grounding <= 1, "in [0, 1]"),
            "dup_jaccard": (0 < self.dup_jaccard <= 1, "in (0, 1]"),
        })


@dataclass(frozen=True)
class QAPair:
    question: str
    reasoning: str
    answer: str


_FIELDS = {"question": "question", "q": "question", "reasoning": "reasoning", "chain": "reasoning",
           "deduction": "reasoning", "answer": "answer", "a": "answer"}
# (adjacent repeats never share a character class: a line of 50K '*' costs linear time, not quadratic)
_LABEL = re.compile(r"^[ \t>*#_-]*(?:\d{1,3}[.)][ \t]*[*_]*)?(question|q|reasoning|chain|deduction|answer|a)"
                    r"(?:[ \t]*\d{1,3})?[*_ \t]*[:：][*_ \t]*", re.I | re.M)
_MAX_CHARS = 50_000  # a reply past this is junk; keeps the parse bounded


def _clean(s: str) -> str:
    lines = [ln for ln in s.strip().splitlines() if not re.fullmatch(r"\s*(?:-{3,}|\*{3,}|_{3,})\s*", ln)]
    return "\n".join(lines).strip().strip("*_").strip()


def parse_qa_pairs(text) -> list[QAPair]:
    """Pairs with a non-empty question and answer, in order; a field repeated within a block
    starts no new pair (only a new Question does). Never raises."""
    if not isinstance(text, str):
        return []
    text = text[:_MAX_CHARS]
    marks = list(_LABEL.finditer(text))
    pairs, cur = [], None
    for m, nxt in zip(marks, marks[1:] + [None]):
        kind = _FIELDS[m.group(1).lower()]
        value = _clean(text[m.end():nxt.start() if nxt else len(text)])
        if kind == "question":
            cur = {"question": value}
            pairs.append(cur)
        elif cur is not None and kind not in cur:
            cur[kind] = value
    return [QAPair(p["question"], p.get("reasoning", ""), p["answer"])
            for p in pairs if p["question"] and p.get("answer")]


def _stem(w: str) -> str:
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


def terms(text: str) -> set[str]:
    """Content words: lower-cased, stopwords and numbers out, a plural s stripped."""
    return {_stem(w) for w in words(text) if w not in _STOP and not w.isdigit() and len(w) > 1}


_NUM = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])|(?<![\w.])-?\d+(?:\.\d+)?(?:/\d+)?(?!\w)")


def numbers(text: str) -> set:
    """Exact values of the numbers written in `text` (Fractions)."""
    return {v for v in (parse_number(m.group()) for m in _NUM.finditer(text or "")) if v is not None}


def _share(part: set, whole: set) -> float:
    return len(part & whole) / len(part) if part else 1.0


def support_problem(pair: QAPair, passage: str, config: QAConfig) -> str | None:
    """Why the pair's answer is not backed by the passage (see the module doc), or None."""
    p_terms, p_nums = terms(passage), numbers(passage)
    c_terms = terms(pair.reasoning)
    grounded = bool(c_terms) and _share(c_terms, p_terms) >= config.min_chain_grounding
    if grounded:
        p_terms, p_nums = p_terms | c_terms, p_nums | numbers(pair.reasoning)
    a_terms, a_nums = terms(pair.answer), numbers(pair.answer)
    missing = sorted(str(v) for v in a_nums - p_nums)
    if missing:
        return f"unsupported_answer: number(s) {', '.join(missing)} not in the passage or reasoning"
    if not a_terms and not a_nums:
        return None if grounded else "unsupported_answer: no grounded reasoning"
    if _share(a_terms, p_terms) < config.min_answer_support:
        return "unsupported_answer: answer terms not in the passage or reasoning"
    return None


def question_key(question: str) -> str:
    """A key equal for questions that differ only in wording noise (case, punctuation, stopwords,
    plurals, word order): for dedupe across seeds in the Ray stage."""
    return " ".join(sorted(terms(question)))


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def select_pairs(pairs: list[QAPair], passage: str, config: QAConfig) -> list[tuple[QAPair, str]]:
    """(pair, status) for every pair: "ok", "unsupported_answer: ..." or "duplicate_question"."""
    kept: list[set] = []
    out = []
    for pair in pairs:
        problem = support_problem(pair, passage, config)
        q = terms(pair.question)
        if problem is None and any(_jaccard(q, k) >= config.dup_jaccard for k in kept):
            problem = "duplicate_question"
        if problem is None:
            kept.append(q)
        out.append((pair, problem or "ok"))
    return out


async def qa_step(engine: Engine, seeds: list[dict], config: QAConfig = QAConfig(),
                  call: CallConfig = CallConfig()) -> list[dict]:
    """Seeds {"seed_id", "text", optional "source" (book / paper / code)} -> rows of SCHEMA,
    at least one per seed, in seed order."""
    tmpl = load_template("qa_extract")
    slots: list[list[dict]] = []
    jobs = []
    for seed in seeds:
        sid, text, bad = seed_value(seed, "text")
        source = seed.get("source") if isinstance(seed, dict) else None
        row = make_row(SCHEMA, seed_id=sid, template_id=tmpl.template_id, status=bad,
                       source=source if isinstance(source, str) else None)
        slots.append([row])
        if bad is None:
            jobs.append((len(slots) - 1, text, Request.of(tmpl.render(passage=text, max_pairs=config.max_pairs),
                                                          config.sampling, guide=tmpl.guide)))
    outcomes = await call_all(engine, [r for _, _, r in jobs], **call.kwargs())
    for (i, text, _), out in zip(jobs, outcomes):
        base = slots[i][0]
        pairs = parse_qa_pairs(out.text) if out.ok else []
        if not out.ok or not pairs:
            base["status"] = out.error or "no_pairs"
            continue
        # pairs past max_pairs (the model ignored the limit) still get rows, so counts add up
        judged = select_pairs(pairs[:config.max_pairs], text, config)
        judged += [(p, "over_max_pairs") for p in pairs[config.max_pairs:]]
        slots[i] = [{**base, "pair_index": k, "question": p.question, "reasoning": p.reasoning or None,
                     "answer": p.answer, "status": status} for k, (p, status) in enumerate(judged)]
    return [row for rows in slots for row in rows]
