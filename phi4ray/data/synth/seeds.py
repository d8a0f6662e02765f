"""What the synthesis steps start from, chosen deterministically from the run's documents.

- prose (every curated source but `code`): passages of documents (`segment_passages`), for rewrite
  and qa, and for revise as a task asking to reason out what follows from the passage;
- code: top-level functions (undecorated, `code_min_lines`..`code_max_chars`), those with doctests
  first: the reversal step runs those as tests of the regenerated code;
- plurality: the first `synth.seeds` valid rows of `synth.questions_file` (organic questions, their
  answers if given), qa's kept questions with their answers, plus `arith_questions` toy arithmetic
  problems (phi4ray.toy.arith) with their references as organic answers.
Every seed has a stable `seed_id`; the same documents and config always give the same seeds.

Which documents, page then passage (the report's two-stage seed filter): each document has a
`score`, the page quality classifier's `quality_score` from curation (0 where a file has none),
and a `rank` (a hash of the run's seed, its source and doc_id) that breaks ties. Each source offers
its `pool_size` best documents (`top_documents`, by score, then rank). That pick is the same per
file and then over the files' picks as over everything at once, so actors.data.synthesize runs it as a
Ray Data pass (only the candidates reach the driver, a few per seed: bounded by `synth.seeds`,
never by the corpus) and `pick_documents` runs it here, on the same files, with the same result.
Then passages: the candidates' passages are ranked by their passage scores (the mean of
`passage_scores`' factual and reasoning densities) and the best `synth.seeds` become seeds.
"""
from __future__ import annotations

import ast
import hashlib
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import pyarrow.parquet as pq

from phi4ray.data.corpus import spread, write_builtin_corpus
from phi4ray.data.curate.passages import passage_scores, segment_passages
from phi4ray.data.synth import qa, reversal
from phi4ray.run.rowfiles import BadRow, check_files_exist, load_rows
from phi4ray.toy.arith import make_arithmetic

READ_ROWS = 1024  # rows per read of a seed file: what bounds a reader's memory, not the file's size
CODE_SOURCES = ("code",)  # every other curated source gives prose passages
# revise needs a task; a passage becomes one that asks for reasoning grounded in it. Its wording is
# part of every revise seed, so editing it changes the chunk ids (the work is redone, never mixed)
REVISE_TASK = ("Explain, step by step, what follows from the passage below: the conclusions a careful "
               "reader can draw from it and the reasoning that leads to each.\n\n[Passage]\n{passage}\n"
               "[End of Passage]")


def rank(seed: int, source: str, doc_id: str) -> int:
    """A document's place in the seed draw: 63 bits of sha1(seed, source, doc_id). It depends on
    nothing but the document, so a column computed in any block, on any worker, orders the same."""
    digest = hashlib.sha1(f"{seed}\x00{source}\x00{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # an int64 column, never negative


def order(doc: dict) -> tuple:
    """The draw's total order: the page score (best first), then rank, doc_id and text, so two rows
    of one (source, doc_id) still sort the same way whatever order they are read in."""
    return -doc["score"], doc["rank"], doc["doc_id"], doc["text"]


def passage_score(text: str) -> float:
    """A passage's worth as a seed: the mean of its factual and reasoning densities."""
    sc = passage_scores([text])[0]
    return (sc["factual"] + sc["reasoning"]) / 2


def pool_size(source: str, s) -> int:
    """Candidate documents a source offers: a few per seed, some give no passage or function that fits."""
    return (8 if source in CODE_SOURCES else 4) * s.seeds


def seed_files(run_dir: Path, cfg) -> tuple[str, Path, list[str]]:
    """(where from, root, Parquet files relative to root, sorted): RUN/curated/<source>/ when it
    holds Parquet files, else the built-in corpus in RUN/builtin/<n> (the folder the tokenize stage
    falls back to as well, so it is written once). A file's source is its first path part."""
    root = run_dir / "curated"
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else []
    files = [f for f in files if len(f.relative_to(root).parts) > 1]  # RUN/curated/<source>/...
    origin = "curated"
    if not files:
        n = cfg.data.builtin_max_docs
        root = run_dir / "builtin" / str(n)
        write_builtin_corpus(root, n)
        files, origin = sorted(root.rglob("*.parquet")), f"builtin/{n}"
    return origin, root, [f.relative_to(root).as_posix() for f in files]


def file_documents(root: Path, rel: str, seed: int) -> Iterator[dict]:
    """The documents of one file {"source", "doc_id", "text", "rank", "score"}, read READ_ROWS rows
    at a time (a file's size never sits in memory). Without a doc_id/id column a document is
    `<rel>:<row>`; without a quality_score column (or a null one) its score is 0; a null or blank
    text seeds nothing."""
    f, source = Path(root) / rel, PurePosixPath(rel).parts[0]
    pf = pq.ParquetFile(f)
    names = pf.schema_arrow.names
    if "text" not in names:
        raise ValueError(f"synthesize: {f} has no 'text' column")
    id_col = next((c for c in ("doc_id", "id") if c in names), None)
    score_col = "quality_score" if "quality_score" in names else None
    row = 0
    cols = ["text"] + [c for c in (id_col, score_col) if c]
    for batch in pf.iter_batches(batch_size=READ_ROWS, columns=cols):
        texts = batch.column("text").to_pylist()
        ids = batch.column(id_col).to_pylist() if id_col else [None] * len(texts)
        scores = batch.column(score_col).to_pylist() if score_col else [None] * len(texts)
        for doc_id, text, score in zip(ids, texts, scores):
            if isinstance(text, str) and text.strip():
                doc_id = str(doc_id) if doc_id not in (None, "") else f"{rel}:{row}"
                yield {"source": source, "doc_id": doc_id, "text": text, "rank": rank(seed, source, doc_id),
                       "score": float(score) if score is not None else 0.0}
            row += 1


def top_documents(docs: Iterable[dict], s) -> dict[str, list[dict]]:
    """{source: its first `pool_size` documents by `order`}, whatever order `docs` come in; holds at
    most twice that many per source. The same pick per file, then over the files' picks, gives the
    same documents as over all at once: what lets the Ray pass merge blocks' picks."""
    keep: dict[str, list[dict]] = {}
    for d in docs:
        buf = keep.setdefault(d["source"], [])
        buf.append(d)
        if len(buf) > 2 * pool_size(d["source"], s):
            buf.sort(key=order)
            del buf[pool_size(d["source"], s):]
    for src, buf in keep.items():
        buf.sort(key=order)
        del buf[pool_size(src, s):]
    return keep


def pick_documents(run_dir: Path, cfg) -> tuple[str, dict[str, list[dict]]]:
    """(where from, `top_documents` of every seed file) in this process: the Ray-free path, the
    same documents as actors.data.synthesize's Ray Data pass."""
    origin, root, rels = seed_files(run_dir, cfg)
    return origin, top_documents((d for rel in rels for d in file_documents(root, rel, cfg.seed)), cfg.synth)


def _unique(seeds: list[dict]) -> list[dict]:
    seen: set[str] = set()
    return [s for s in seeds if not (s["seed_id"] in seen or seen.add(s["seed_id"]))]


def _pool(docs: dict[str, list[dict]], code: bool, k: int) -> list[dict]:
    """The first k documents by `order` of the prose (or code) sources: the same from every
    document as from each source's `top_documents`."""
    return sorted((d for src in docs if (src in CODE_SOURCES) == code for d in docs[src]), key=order)[:k]


def prose_seeds(docs: dict[str, list[dict]], s) -> list[dict]:
    """The `s.seeds` best passages {"seed_id", "text", "source"} by passage score (ties: the page
    order, then the passage's place) of the prose documents first in the draw (`docs`: documents
    with their score and rank, by source)."""
    out = []
    for i, d in enumerate(_pool(docs, False, 4 * s.seeds)):  # a few documents per seed: some give no passage that fits
        for k, p in enumerate(segment_passages(d["text"], s.passage_max_chars, s.passage_min_chars)):
            if s.passage_min_chars <= len(p) <= s.passage_max_chars:  # a long code block stays whole: skip it
                out.append((-passage_score(p), i, k, {"seed_id": f"{d['source']}:{d['doc_id']}#{k}", "text": p,
                                                      "source": d["source"]}))
    return _unique([seed for *_, seed in sorted(out, key=lambda t: t[:3])])[:s.seeds]


def revise_seeds(passages: list[dict]) -> list[dict]:
    return [{"seed_id": p["seed_id"], "task": REVISE_TASK.replace("{passage}", p["text"]), "source": p["source"]}
            for p in passages]


def functions(source: str, doc_id: str, text: str, s) -> list[dict]:
    """Top-level undecorated functions of a code document that fit the size limits, as seeds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old escape sequences in some files
        tree = reversal.parse_python(text)
    out = []
    for node in tree.body if tree else []:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.decorator_list:
            code = ast.get_source_segment(text, node)
            if code and node.end_lineno - node.lineno + 1 >= s.code_min_lines and len(code) <= s.code_max_chars:
                out.append({"seed_id": f"{source}:{doc_id}::{node.name}@{node.lineno}", "code": code,
                            "source": source})
    return out


def code_seeds(docs: dict[str, list[dict]], s) -> list[dict]:
    """`s.seeds` functions, those with doctests first (they make fidelity an execution check)."""
    pool = _pool(docs, True, 8 * s.seeds)
    cands = _unique([f for d in pool for f in functions(d["source"], d["doc_id"], d["text"], s)])
    tested = {c["seed_id"] for c in cands if reversal.derive_tests(c["code"])}
    pick = spread([c for c in cands if c["seed_id"] in tested], s.seeds)
    pick += spread([c for c in cands if c["seed_id"] not in tested], s.seeds - len(pick))
    return sorted(pick, key=lambda c: c["seed_id"])


def dedupe_questions(rows: list[dict]) -> None:
    """qa dedupes within a seed; across seeds the first kept question (seed order) wins."""
    seen: set[str] = set()
    for r in rows:
        if r["status"] == "ok":
            key = qa.question_key(r["question"])
            if key in seen:
                r["status"] = "duplicate_question_across_seeds"
            seen.add(key)


QUESTIONS_OPTION = "synth.questions_file"


def question_files(cfg) -> list[str]:
    """The stage's input files (their contents join its key)."""
    return [cfg.synth.questions_file] if cfg.synth.questions_file else []


def check_questions_file(cfg, run_dir: Path, options: dict) -> None:
    """The questions file exists (part of the synthesize stage's `check`: before Ray or a teacher starts)."""
    check_files_exist(question_files(cfg), QUESTIONS_OPTION)


def organic_questions(cfg, quarantine: Path) -> tuple[list[dict], dict]:
    """The first `synth.seeds` valid rows of `synth.questions_file` as plurality seeds, and the
    counts {"read", "used", "quarantined"}; bad rows go to `quarantine` with file:line and why.
    A row is {"question": str, optional "answer": str, "id": str | int}; its seed id is
    `organic:<id>`, else `organic:<file name>:<line>`, and a repeated one is a bad row."""
    path, seen = cfg.synth.questions_file, set()

    def parse(where: str, row: object) -> dict:
        if not isinstance(row, dict):
            raise BadRow(f"a row must be an object, got {type(row).__name__}")
        question, answer, rid = row.get("question"), row.get("answer"), row.get("id")
        if question is None:
            raise BadRow("no question")
        if not isinstance(question, str):
            raise BadRow(f"question must be a string, got {type(question).__name__}")
        if not question.strip():
            raise BadRow("empty question")
        if answer is not None and not isinstance(answer, str):
            raise BadRow(f"answer must be a string, got {type(answer).__name__}")
        # bool is an int: an id of `true` is a mistake, not a name
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
            raise BadRow(f"id must be a string or an integer, got {type(rid).__name__}")
        # Parquet fills a row's missing id with null, JSONL may leave it out: then the line names it
        sid = f"organic:{rid}" if rid not in (None, "") else f"organic:{Path(path).name}:{where.rsplit(':', 1)[1]}"
        if sid in seen:
            raise BadRow(f"seed id {sid!r} repeats an earlier row's")
        seen.add(sid)
        return {"seed_id": sid, "question": question, "source": "organic",
                **({"answer": answer} if answer and answer.strip() else {})}

    return load_rows(path, parse, cfg.synth.seeds, quarantine, option=QUESTIONS_OPTION, what="question")


def plurality_seeds(qa_rows: list[dict], cfg, organic: Iterable[dict] = ()) -> list[dict]:
    """The `organic` questions (`organic_questions`), then qa's kept ones, then toy arithmetic."""
    s = cfg.synth
    found = [{"seed_id": f"qa:{r['seed_id']}#{r['pair_index']}", "question": r["question"], "answer": r["answer"],
              "source": "qa"} for r in qa_rows if r["status"] == "ok"]
    # seed + 3: pts draws its queries with seed + 1 and the judge round with seed + 2
    arith = [{"seed_id": f"arith:{p['id']}", "question": p["question"], "answer": p["answer"], "source": "arith"}
             for p in make_arithmetic(s.arith_questions, cfg.seed + 3, cfg.arith)] if s.arith_questions else []
    return list(organic) + spread(found, s.seeds) + arith
