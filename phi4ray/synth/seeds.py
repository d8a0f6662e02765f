"""What the synthesis steps start from, chosen deterministically from the run's documents.

- prose (every curated source but `code`): passages of documents (`segment_passages`), for rewrite
  and qa, and for revise as a task asking to reason out what follows from the passage;
- code: top-level functions (undecorated, `code_min_lines`..`code_max_chars`), those with doctests
  first: the reversal step runs those as tests of the regenerated code;
- plurality: qa's kept questions with their organic answers, plus `arith_questions` toy arithmetic
  problems (phi4ray.arith) with their references as organic answers.
Every seed has a stable `seed_id`; the same documents and config always give the same seeds.

Scale note: seeds are chosen in the driver from the curated documents' ids and texts; past a few
million documents that pass would read ids first and texts of the chosen documents only.
"""
from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pyarrow.parquet as pq

from phi4ray.arith import make_arithmetic
from phi4ray.corpus import spread, write_builtin_corpus
from phi4ray.passages import segment_passages
from phi4ray.synth import qa, reversal

CODE_SOURCES = ("code",)  # every other curated source gives prose passages
# revise needs a task; a passage becomes one that asks for reasoning grounded in it. Its wording is
# part of every revise seed, so editing it changes the chunk ids (the work is redone, never mixed)
REVISE_TASK = ("Explain, step by step, what follows from the passage below: the conclusions a careful "
               "reader can draw from it and the reasoning that leads to each.\n\n[Passage]\n{passage}\n"
               "[End of Passage]")


def read_documents(run_dir: Path, cfg) -> tuple[str, dict[str, list[dict]]]:
    """(where from, {source: [{"doc_id", "text"}] sorted by doc_id}): RUN/curated/<source>/ when it
    holds Parquet files, else the built-in corpus in RUN/builtin/<n> (the folder the tokenize stage
    falls back to as well, so it is written once)."""
    root = run_dir / "curated"
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else []
    files = [f for f in files if len(f.relative_to(root).parts) > 1]  # RUN/curated/<source>/...
    origin = "curated"
    if not files:
        n = cfg.data.builtin_max_docs
        root = run_dir / "builtin" / str(n)
        write_builtin_corpus(root, n)
        files, origin = sorted(root.rglob("*.parquet")), f"builtin/{n}"
    docs: dict[str, list[dict]] = {}
    for f in files:
        rel = f.relative_to(root)
        names = pq.read_schema(f).names
        if "text" not in names:
            raise ValueError(f"synthesize: {f} has no 'text' column")
        id_col = next((c for c in ("doc_id", "id") if c in names), None)
        table = pq.read_table(f, columns=["text"] + ([id_col] if id_col else []))
        ids = table.column(id_col).to_pylist() if id_col else [None] * table.num_rows
        for i, (doc_id, text) in enumerate(zip(ids, table.column("text").to_pylist())):
            if isinstance(text, str) and text.strip():  # a null or blank document seeds nothing
                doc_id = str(doc_id) if doc_id not in (None, "") else f"{rel.as_posix()}:{i}"
                docs.setdefault(rel.parts[0], []).append({"doc_id": doc_id, "text": text})
    for v in docs.values():
        v.sort(key=lambda d: d["doc_id"])
    return origin, docs


def _unique(seeds: list[dict]) -> list[dict]:
    seen: set[str] = set()
    return [s for s in seeds if not (s["seed_id"] in seen or seen.add(s["seed_id"]))]


def prose_seeds(docs: dict[str, list[dict]], s) -> list[dict]:
    """`s.seeds` passages {"seed_id", "text", "source"} spread over the prose documents."""
    pool = [(src, d) for src in sorted(docs) if src not in CODE_SOURCES for d in docs[src]]
    out = []
    for src, d in spread(pool, 4 * s.seeds):  # a few documents per seed: some give no passage that fits
        for k, p in enumerate(segment_passages(d["text"], s.passage_max_chars, s.passage_min_chars)):
            if s.passage_min_chars <= len(p) <= s.passage_max_chars:  # a long code block stays whole: skip it
                out.append({"seed_id": f"{src}:{d['doc_id']}#{k}", "text": p, "source": src})
    return spread(_unique(out), s.seeds)


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
    pool = [(src, d) for src in sorted(docs) if src in CODE_SOURCES for d in docs[src]]
    cands = _unique([f for src, d in spread(pool, 8 * s.seeds) for f in functions(src, d["doc_id"], d["text"], s)])
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


def plurality_seeds(qa_rows: list[dict], cfg) -> list[dict]:
    s = cfg.synth
    found = [{"seed_id": f"qa:{r['seed_id']}#{r['pair_index']}", "question": r["question"], "answer": r["answer"],
              "source": "qa"} for r in qa_rows if r["status"] == "ok"]
    # seed + 3: pts draws its queries with seed + 1 and the judge round with seed + 2
    arith = [{"seed_id": f"arith:{p['id']}", "question": p["question"], "answer": p["answer"], "source": "arith"}
             for p in make_arithmetic(s.arith_questions, cfg.seed + 3, cfg.arith)] if s.arith_questions else []
    return spread(found, s.seeds) + arith
