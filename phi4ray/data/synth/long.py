"""Long-context rows from qa's kept pairs, with no teacher call: the report's synthetic long data for
midtraining (RUN/synthetic/long, read only by the midtrain mixture's `long` source).

A row is the pair's question asked after its whole source document, inside other documents of the
same source, so answering means reading back across the context: a needle-in-a-haystack task
grounded in real text. Its text is the context documents joined by blank lines, then the qa
document (`STEPS["qa"].text`: User: question / Assistant: reasoning, Answer: answer), answer last.
- the source document is the one the seed passage came from (seed_id `<source>:<doc_id>#<k>`),
  whole; one longer than the room left by the Q&A is cut to the run of its passages around the
  seed passage that fits;
- the other candidate documents of its source fill the room: whole while they fit, the first that
  does not is cut at a paragraph break and ends the row. Which documents and where the source
  document sits among them come from a hash of the pair and the run seed, so the needle is not
  always first and the same run gives the same rows;
- at most `max_chars` characters (`synth.long_chars`; 0 = the midtraining context's worth), and at
  least `min_chars` (the midtrain mixture's 2 x data.seq_len tokens' worth), else not made.
Characters stand in for tokens (`CHARS_PER_TOKEN`): the tokenize stage counts the real tokens, and
the midtrain mixture drops (and counts) a row under 2 x data.seq_len of them like any document.

Every kept pair has one outcome (`OUTCOMES`): made; too_short (its source's candidates do not
reach min_chars); too_long (its passage with the Q&A alone exceeds max_chars); no_document (its
seed passage is not a passage of a candidate document).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from phi4ray.data.curate.passages import segment_passages
from phi4ray.data.mixtures import SYNTHETIC_LONG
from phi4ray.data.synth.seeds import rank
from phi4ray.data.synth.steps import STEPS

# An estimate, English prose in Phi-4's tokenizer (code runs nearer 3); only the tokenize stage
# knows a row's tokens, this sizes the rows so most land between 2 x seq_len and the long context
CHARS_PER_TOKEN = 4
SEP = "\n\n"
OUTCOMES = ("made", "too_short", "too_long", "no_document")
STEP = SYNTHETIC_LONG  # the rows' `step`, and their file: RUN/synthetic/long/long.parquet


@dataclass(frozen=True)
class LongLimits:
    min_chars: int
    max_chars: int


def long_limits(cfg) -> LongLimits:
    """A RunConfig's limits: rows up to the midtraining context (data.seq_len x
    midtrain.context_multiplier tokens) unless synth.long_chars says otherwise, and of at least the
    2 x data.seq_len tokens the midtrain mixture keeps."""
    seq_len = cfg.data.seq_len
    return LongLimits(min_chars=CHARS_PER_TOKEN * 2 * seq_len,
                      max_chars=cfg.synth.long_chars or CHARS_PER_TOKEN * seq_len * cfg.midtrain.context_multiplier)


def _window(passages: list[str], k: int, room: int) -> str | None:
    """The longest run of passages around passage k that fits `room`, growing after it first."""
    lo, hi, used = k, k + 1, len(passages[k])
    if used > room:
        return None
    grew = True
    while grew:
        grew = False
        for at in (hi, lo - 1):
            if 0 <= at < len(passages) and used + len(SEP) + len(passages[at]) <= room:
                used += len(SEP) + len(passages[at])
                lo, hi, grew = min(lo, at), max(hi, at + 1), True
    return SEP.join(passages[lo:hi])


def _fill(cands: list[dict], skip: str, start: int, room: int) -> list[tuple[str, str]]:
    """(doc_id, text) of the candidates from `start` on (wrapping, `skip` left out) that fill
    `room`, the last one cut at a paragraph break if it does not fit whole: a row costs the
    documents it takes, not the source's pool."""
    out: list[tuple[str, str]] = []
    for i in range(len(cands)):
        d = cands[(start + i) % len(cands)]
        free = room - len(SEP)
        if free <= 0:
            break
        if d["doc_id"] == skip:
            continue
        if len(d["text"]) <= free:
            out.append((d["doc_id"], d["text"]))
            room = free - len(d["text"])
            continue
        cut = d["text"].rfind(SEP, 0, free)
        if cut > 0 and d["text"][:cut].strip():
            out.append((d["doc_id"], d["text"][:cut].rstrip()))
        break
    return out


def _source_document(cands: list[dict], k: str, passage: str | None, s) -> tuple[dict, list[str]] | None:
    """The candidate whose passage k is the seed's, with its passages (two rows of one doc_id,
    which the draw allows, are told apart by the passage they gave)."""
    for d in cands if k.isdigit() else ():
        passages = segment_passages(d["text"], s.passage_max_chars, s.passage_min_chars)
        if int(k) < len(passages) and passages[int(k)] == passage:
            return d, passages
    return None


def long_rows(seeds: list[dict], rows: list[dict], docs: dict[str, list[dict]], s, limits: LongLimits,
              seed: int) -> Iterator[tuple[str, dict | None]]:
    """(outcome, row of phi4ray.data.synth.outputs.OUT_SCHEMA or None) per kept qa pair, in row
    order, one at a time: the driver holds the candidate documents it already has and one row."""
    passage_of = {x["seed_id"]: x["text"] for x in seeds}
    by_key: dict[str, list[dict]] = {}
    for src, ds in docs.items():
        for d in ds:
            by_key.setdefault(f"{src}:{d['doc_id']}", []).append(d)
    qa_text = STEPS["qa"].text
    for r in rows:
        qa = qa_text(r) if r["status"] == "ok" else None
        if not qa:
            continue
        key, _, k = r["seed_id"].rpartition("#")
        found = _source_document(by_key.get(key, []), k, passage_of.get(r["seed_id"]), s)
        if found is None:
            yield "no_document", None
            continue
        doc, passages = found
        room = limits.max_chars - len(SEP) - len(qa)
        cut = len(doc["text"]) > room
        own = _window(passages, int(k), room) if cut else doc["text"]
        if own is None:
            yield "too_long", None
            continue
        cands = docs[doc["source"]]
        h = rank(seed, STEP, f"{r['seed_id']}/{r['pair_index']}")
        context = _fill(cands, doc["doc_id"], h % len(cands), room - len(own))
        at = (h >> 32) % (len(context) + 1)
        context.insert(at, (doc["doc_id"], own))
        text = SEP.join(t for _, t in context) + SEP + qa
        if len(text) < limits.min_chars:
            yield "too_short", None
            continue
        meta = {"pair_index": r["pair_index"], "documents": [i for i, _ in context], "source_document": at,
                "source_cut": cut, "question": r["question"], "answer": r["answer"]}
        yield "made", {"text": text, "seed_id": r["seed_id"], "step": STEP, "kind": "qa",
                       "template_id": r["template_id"], "seed_source": doc["source"],
                       "meta": json.dumps(meta, ensure_ascii=False)}


def long_report(outcomes: dict[str, int], limits: LongLimits) -> dict:
    """pairs = made + too_short + too_long + no_document, and the limits they were made under."""
    counts = {o: outcomes.get(o, 0) for o in OUTCOMES}
    return {"pairs": sum(counts.values()), **counts, "min_chars": limits.min_chars, "max_chars": limits.max_chars}
