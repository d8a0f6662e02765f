"""Stage `synthesize`: seeds from RUN/curated -> synthesis steps on Ray Data -> RUN/synthetic.

    RUN/curated/<source>/*.parquet (else the built-in corpus)
      -> seeds per step, chosen deterministically (sorted, spread), each with a stable seed_id
      -> chunks of `synth.chunk_size` seeds -> `ChunkActor`s (map_batches; each holds one teacher
         engine: the Serve fleet or an external endpoint) run the step (phi4ray.synth) on a chunk
         and write its rows to RUN/synthesize/<step>/<chunk_id>.parquet (tmp file + rename)
      -> plurality after qa (qa's questions, deduplicated across seeds, are among its seeds)
      -> RUN/synthetic/web_rewrites/rewrite.parquet and RUN/synthetic/synthetic/<step>.parquet
         (kept rows: `text` + provenance), RUN/synthesize/dropped/<step>.parquet (every other row
         with its status), RUN/synthesize/report.json, RUN/manifests/synthesize.json

Seeds:
- prose (every curated source but `code`): passages of documents (`segment_passages`), for rewrite
  and qa, and for revise as a task asking to reason out what follows from the passage;
- code: top-level functions (undecorated, `code_min_lines`..`code_max_chars`), those with doctests
  first: the reversal step runs those as tests of the regenerated code;
- plurality: qa's kept questions with their organic answers, plus `arith_questions` toy arithmetic
  problems (phi4ray.arith) with their references as organic answers.

Resume and idempotence: a chunk's id is its position plus a hash of what decides its rows (the
step's config, the teacher, the run seed, the prompt templates, its seeds), so a rerun skips every
chunk whose file exists and redoes only the missing ones; a changed config gets new ids, never a
stale file. A crash costs at most the chunks in flight, and everything after the chunks (qa dedupe,
outputs, report) is recomputed from the chunk files, so the result equals an uninterrupted run's
(sampling is seeded per prompt on the fleet, see actors/fleet_engine.py). A row whose LLM call
failed is a finished record ("llm_error: ..."), so its chunk is not redone on a rerun: delete the
chunk file to retry it. The stage core (`synthesize`) takes any runner: `RayRunner` (Ray Data +
fleet/endpoint) or `LocalRunner` (one engine, in this process: tests, debugging).

Scale note: seeds are chosen in the driver from the curated documents' ids and texts; past a few
million documents that pass would read ids first and texts of the chosen documents only.
"""
from __future__ import annotations

import ast
import asyncio
import dataclasses
import hashlib
import json
import shutil
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from phi4ray import manifest
from phi4ray.corpus import _spread
from phi4ray.synth import plurality, qa, reversal, revise, rewrite
from phi4ray.synth.templates import template_digests

STAGE = "synthesize"
CODE_SOURCES = ("code",)  # every other curated source gives prose passages
EXCERPT = 300
# revise needs a task; a passage becomes one that asks for reasoning grounded in it. Its wording is
# part of every revise seed, so editing it changes the chunk ids (the work is redone, never mixed)
REVISE_TASK = ("Explain, step by step, what follows from the passage below: the conclusions a careful "
               "reader can draw from it and the reasoning that leads to each.\n\n[Passage]\n{passage}\n"
               "[End of Passage]")

OUT_SCHEMA = pa.schema([("text", pa.string()), ("seed_id", pa.string()), ("step", pa.string()),
                        ("kind", pa.string()), ("template_id", pa.string()), ("seed_source", pa.string()),
                        ("meta", pa.string())])


def dialogue(user: str | None, assistant: str | None) -> str | None:
    """A prompt/response pair as one plain-text training document. Plain text, not Phi-4 chat tokens:
    the tokenize stage encodes documents with `encode_ordinary`, where special tokens are text."""
    if not (user or "").strip() or not (assistant or "").strip():
        return None
    return f"User: {user.strip()}\n\nAssistant: {assistant.strip()}"


def _qa_text(r: dict) -> str | None:
    body = f"{r['reasoning'].strip()}\n\nAnswer: {r['answer']}" if r.get("reasoning") else r.get("answer")
    return dialogue(r.get("question"), body)


def _code_block(code: str | None) -> str | None:
    return f"```python\n{code.strip()}\n```" if code else None


def _fields(r: dict, *names: str) -> str | None:
    """`name: value` lines of a row's set fields: what a report example shows of a step's output."""
    parts = [f"{n}: {r[n]}" for n in names if r.get(n) not in (None, "")]
    return "\n".join(parts) or None


@dataclass(frozen=True)
class StepSpec:
    run: Callable          # async (engine, seeds, config=, call=) -> rows of `schema`
    schema: pa.Schema
    seed_field: str        # the seed's text, for report examples
    text: Callable[[dict], str | None]  # a kept row's training document
    shown: tuple[str, ...]  # the row's fields a report example shows


STEPS = {
    "rewrite": StepSpec(rewrite.rewrite_step, rewrite.SCHEMA, "text", lambda r: r.get("text"), ("kind", "text")),
    "revise": StepSpec(revise.revise_step, revise.SCHEMA, "task", lambda r: dialogue(r.get("task"), r.get("text")),
                       ("rounds", "min_score", "text")),
    "reversal": StepSpec(reversal.reversal_step, reversal.SCHEMA, "code",
                         lambda r: dialogue(r.get("instruction"), _code_block(r.get("code"))),
                         ("tests_source", "fidelity", "instruction", "regenerated_code")),
    "qa": StepSpec(qa.qa_step, qa.SCHEMA, "text", _qa_text, ("question", "reasoning", "answer")),
    "plurality": StepSpec(plurality.plurality_step, plurality.SCHEMA, "question",
                          lambda r: dialogue(r.get("question"), r.get("majority_solution")),
                          ("organic_answer", "majority_answer", "majority_share", "cluster_sizes", "majority_solution")),
}


# --- seeds -----------------------------------------------------------------------------------------
def read_documents(run_dir: Path, cfg) -> tuple[str, dict[str, list[dict]]]:
    """(where from, {source: [{"doc_id", "text"}] sorted by doc_id}): RUN/curated/<source>/ when it
    holds Parquet files, else the built-in corpus in RUN/builtin/<n> (the folder the tokenize stage
    falls back to as well, so it is written once)."""
    root = run_dir / "curated"
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else []
    files = [f for f in files if len(f.relative_to(root).parts) > 1]  # RUN/curated/<source>/...
    origin = "curated"
    if not files:
        from phi4ray.corpus import write_builtin_corpus

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
    from phi4ray.curate.quality import segment_passages

    pool = [(src, d) for src in sorted(docs) if src not in CODE_SOURCES for d in docs[src]]
    out = []
    for src, d in _spread(pool, 4 * s.seeds):  # a few documents per seed: some give no passage that fits
        for k, p in enumerate(segment_passages(d["text"], s.passage_max_chars, s.passage_min_chars)):
            if s.passage_min_chars <= len(p) <= s.passage_max_chars:  # a long code block stays whole: skip it
                out.append({"seed_id": f"{src}:{d['doc_id']}#{k}", "text": p, "source": src})
    return _spread(_unique(out), s.seeds)


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
    cands = _unique([f for src, d in _spread(pool, 8 * s.seeds) for f in functions(src, d["doc_id"], d["text"], s)])
    tested = {c["seed_id"] for c in cands if reversal.derive_tests(c["code"])}
    pick = _spread([c for c in cands if c["seed_id"] in tested], s.seeds)
    pick += _spread([c for c in cands if c["seed_id"] not in tested], s.seeds - len(pick))
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
    from phi4ray.arith import make_arithmetic

    s = cfg.synth
    found = [{"seed_id": f"qa:{r['seed_id']}#{r['pair_index']}", "question": r["question"], "answer": r["answer"],
              "source": "qa"} for r in qa_rows if r["status"] == "ok"]
    # seed + 3: pts draws its queries with seed + 1 and the judge round with seed + 2
    arith = [{"seed_id": f"arith:{p['id']}", "question": p["question"], "answer": p["answer"], "source": "arith"}
             for p in make_arithmetic(s.arith_questions, cfg.seed + 3, cfg.arith)] if s.arith_questions else []
    return _spread(found, s.seeds) + arith


# --- chunks ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    step: str
    chunk_id: str
    seeds: list[dict]

    def path(self, work: Path) -> Path:
        return Path(work) / self.step / f"{self.chunk_id}.parquet"


def plan_chunks(step: str, seeds: list[dict], cfg, teacher: str) -> list[Chunk]:
    """Consecutive chunks of `synth.chunk_size` seeds. The id hashes what decides the rows; how the
    calls are made (synth.call: concurrency, batching, retries) is left out: it changes no row."""
    s = cfg.synth
    key = json.dumps({"step": step, "config": dataclasses.asdict(getattr(s, step)), "teacher": teacher,
                      "seed": cfg.seed, "templates": template_digests()}, sort_keys=True, default=str)
    out = []
    for i in range(0, len(seeds), s.chunk_size):
        part = seeds[i:i + s.chunk_size]
        digest = hashlib.sha256((key + json.dumps(part, sort_keys=True)).encode()).hexdigest()[:12]
        out.append(Chunk(step, f"{i // s.chunk_size:05d}-{digest}", part))
    return out


def write_table(table: pa.Table, path: Path) -> None:
    """Atomic: a reader (or a rerun) sees the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


async def process_chunk(chunk: Chunk, engine, s, work: Path) -> dict:
    """Run one chunk's step on `engine` and write its rows; a summary for the driver's log."""
    t0 = time.perf_counter()
    spec = STEPS[chunk.step]
    rows = await spec.run(engine, chunk.seeds, config=getattr(s, chunk.step), call=s.call)
    write_table(pa.Table.from_pylist(rows, schema=spec.schema), chunk.path(work))
    return {"step": chunk.step, "chunk_id": chunk.chunk_id, "seeds": len(chunk.seeds), "rows": len(rows),
            "wall_s": round(time.perf_counter() - t0, 2)}


def read_rows(chunks: list[Chunk], work: Path) -> list[dict]:
    """The step's rows in chunk order (= seed order)."""
    return [r for c in chunks for r in pq.read_table(c.path(work)).to_pylist()]


# --- runners: who runs the chunks ------------------------------------------------------------------
class LocalRunner:
    """Chunks one after another in this process, on one engine and one event loop (an endpoint
    client binds to the loop it first runs on): tests, debugging."""

    def __init__(self, engine, name: str = "local"):
        self.engine, self.name, self.loop = engine, name, asyncio.new_event_loop()

    def run(self, chunks: list[Chunk], s, work: Path) -> None:
        for c in chunks:
            self.loop.run_until_complete(process_chunk(c, self.engine, s, work))

    def timings(self) -> dict:
        return {}

    def close(self) -> None:
        self.loop.close()


def build_engine(spec: dict):
    """The teacher engine an actor holds, from a picklable spec."""
    if spec["kind"] == "fleet":
        from actors.fleet_engine import FleetEngine

        return FleetEngine(spec["deployment"], spec["app"], seed=spec["seed"])
    from phi4ray.endpoint import EndpointConfig, OpenAIEndpoint
    from phi4ray.synth.llm import EndpointEngine

    endpoint = OpenAIEndpoint(EndpointConfig(spec["url"], spec["name"], api_key_env=spec["api_key_env"],
                                             max_concurrency=spec["concurrency"]))
    return EndpointEngine(endpoint, mode=spec["mode"])


class ChunkActor:
    """`map_batches` actor: one teacher engine and one event loop for its life, one chunk per row.
    The loop outlives the chunks because an endpoint client binds to the loop it first runs on."""

    def __init__(self, spec: dict, synth, work: str):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.engine, self.s, self.work = build_engine(spec), synth, Path(work)

    def __call__(self, batch: pa.Table) -> pa.Table:
        done = [self.loop.run_until_complete(process_chunk(Chunk(r["step"], r["chunk_id"], json.loads(r["seeds"])),
                                                           self.engine, self.s, self.work))
                for r in batch.to_pylist()]
        return pa.Table.from_pylist(done)


class RayRunner:
    """Chunks on Ray Data actors against the teacher: the run's fleet (started on first use and
    deleted by `close`, unless `fleet` names one already running) or the external endpoint."""

    def __init__(self, run_dir: Path, cfg, fleet: dict | None = None):
        self.cfg, self.fleet, self.app_started, self.ready_s = cfg, fleet, None, None
        s = cfg.synth
        if s.teacher == "endpoint":
            self.name = f"{s.teacher_url}#{s.teacher_name}"
        else:
            from actors.serve_stage import latest_model

            self.model = Path(s.teacher_model).resolve() if s.teacher_model else latest_model(run_dir).resolve()
            self.name = str(self.model)

    def spec(self) -> dict:
        s = self.cfg.synth
        if s.teacher == "endpoint":
            return {"kind": "endpoint", "url": s.teacher_url, "name": s.teacher_name, "mode": s.teacher_mode,
                    "api_key_env": s.teacher_api_key_env, "concurrency": s.call.concurrency * s.call.batch_size}
        if self.fleet is None:
            from actors.serve_stage import start

            t0 = time.time()
            self.fleet = self.app_started = start(str(self.model), self.cfg)
            self.ready_s = round(time.time() - t0, 1)
        return {"kind": "fleet", "deployment": self.fleet["deployment"], "app": self.fleet["app"],
                "seed": self.cfg.seed}

    def run(self, chunks: list[Chunk], s, work: Path) -> None:
        import ray.data

        items = [{"step": c.step, "chunk_id": c.chunk_id, "seeds": json.dumps(c.seeds)} for c in chunks]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        # one chunk queued per actor: a chunk waits for whichever actor frees up first, not behind
        # a slow chunk; pyarrow batches: numpy ones come back as tensor columns pyarrow cannot read
        pool = ray.data.ActorPoolStrategy(size=min(s.actors, len(items)), max_tasks_in_flight_per_actor=1)
        ds = ds.map_batches(ChunkActor, batch_format="pyarrow", batch_size=1, compute=pool, num_cpus=s.actor_cpus,
                            fn_constructor_kwargs={"spec": self.spec(), "synth": s, "work": str(work)})
        for r in ds.iter_rows():
            print(f"synthesize: {r['step']} chunk {r['chunk_id']}: {r['seeds']} seeds -> {r['rows']} rows "
                  f"in {r['wall_s']}s", flush=True)

    def timings(self) -> dict:
        return {} if self.ready_s is None else {"fleet_ready_s": self.ready_s}

    def close(self) -> None:
        if self.app_started:
            from actors.serve_stage import release

            release(self.app_started)
            self.app_started = None


def _run_missing(chunks: list[Chunk], runner, s, work: Path) -> set[tuple[str, str]]:
    """Run the chunks without a file; the (step, chunk_id)s that ran."""
    todo = [c for c in chunks if not c.path(work).is_file()]
    if todo:
        runner.run(todo, s, work)
    lost = [c.chunk_id for c in todo if not c.path(work).is_file()]
    if lost:
        raise RuntimeError(f"synthesize: chunk(s) {lost} finished without writing their rows")
    return {(c.step, c.chunk_id) for c in todo}


def _clean_stale(work: Path, plans: dict[str, list[Chunk]]) -> None:
    """Chunk files of other configs (and tmp files of crashed writes) in the steps that ran."""
    for step, chunks in plans.items():
        keep = {c.path(work).name for c in chunks}
        for f in (work / step).glob("*") if (work / step).is_dir() else []:
            if f.name not in keep:
                f.unlink()


# --- outputs ---------------------------------------------------------------------------------------
def _excerpt(text) -> str | None:
    return None if text is None else (text if len(text) <= EXCERPT else text[:EXCERPT] + "…")


def _why(row: dict) -> str:
    """A status's reason without its detail ("llm_error: TimeoutError: ..." -> "llm_error")."""
    return (row["status"] or "none").split(":", 1)[0]


def check_counts(step: str, seeds: list[dict], rows: list[dict]) -> None:
    """Every seed in shows up in the rows, and no row belongs to a seed that was not in."""
    want, got = [x["seed_id"] for x in seeds], {r["seed_id"] for r in rows}
    if len(set(want)) != len(want) or set(want) != got:
        raise AssertionError(f"synthesize: step {step!r}: {len(want)} seeds in ({len(set(want))} distinct ids) "
                             f"but {len(got)} distinct seed_ids in kept + dropped rows; missing "
                             f"{sorted(set(want) - got)[:5]}, unexpected {sorted(got - set(want))[:5]}")


def step_report(step: str, seeds: list[dict], rows: list[dict], chunks: int, redone: int) -> dict:
    spec = STEPS[step]
    ok = [r for r in rows if r["status"] == "ok"]
    reasons = Counter(_why(r) for r in rows if r["status"] != "ok")
    by_id = {x["seed_id"]: x for x in seeds}
    shown: list[dict] = []
    # up to 3 rows, each from another seed: kept rows first, then one per drop reason, then any
    for pick in (lambda r: r["status"] == "ok", lambda r: _why(r) not in {_why(x) for x in shown}, lambda r: True):
        for r in rows:
            if len(shown) < 3 and pick(r) and r["seed_id"] not in {x["seed_id"] for x in shown}:
                shown.append(r)
    return {"seeds_in": len(seeds), "rows_out": len(rows), "ok": len(ok), "dropped": dict(sorted(reasons.items())),
            "acceptance_rate": round(len(ok) / len(rows), 4) if rows else None,
            "seeds_with_output": len({r["seed_id"] for r in ok}),
            "llm_errors": reasons.get("llm_error", 0), "chunks": chunks, "chunks_run": redone,
            "examples": [{"seed_id": r["seed_id"], "status": r["status"],
                          "seed": _excerpt(by_id[r["seed_id"]].get(spec.seed_field)),
                          "output": _excerpt(_fields(r, *spec.shown))} for r in shown]}


def output_rows(step: str, rows: list[dict], seeds: list[dict], web_rewrite_kinds) -> dict[str, list[dict]]:
    """Kept rows as training documents, by mixture source."""
    spec, source = STEPS[step], {x["seed_id"]: x.get("source") for x in seeds}
    out: dict[str, list[dict]] = {"web_rewrites": [], "synthetic": []}
    for r in rows:
        text = spec.text(r) if r["status"] == "ok" else None
        if not text:
            continue
        kind = r.get("kind") or step
        meta = {k: v for k, v in r.items() if k not in ("text", "status", "seed_id", "template_id") and v is not None}
        dest = "web_rewrites" if step == "rewrite" and kind in web_rewrite_kinds else "synthetic"
        out[dest].append({"text": text, "seed_id": r["seed_id"], "step": step, "kind": kind,
                          "template_id": r["template_id"], "seed_source": source.get(r["seed_id"]),
                          "meta": json.dumps(meta, ensure_ascii=False, default=str)})
    return out


def _swap_in(tmp: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def write_outputs(run_dir: Path, work: Path, steps: dict[str, tuple[list[dict], list[dict]]], s) -> dict:
    """RUN/synthetic (kept, only non-empty files: the tokenize stage reads every file there) and
    RUN/synthesize/dropped, each written aside and swapped in whole."""
    kept_tmp, dropped_tmp = run_dir / "synthetic.partial", work / "dropped.partial"
    for d in (kept_tmp, dropped_tmp):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    counts: dict[str, int] = {"web_rewrites": 0, "synthetic": 0}
    for step, (seeds, rows) in steps.items():
        for dest, out in output_rows(step, rows, seeds, s.web_rewrite_kinds).items():
            if out:
                write_table(pa.Table.from_pylist(out, schema=OUT_SCHEMA), kept_tmp / dest / f"{step}.parquet")
                counts[dest] += len(out)
        dropped = [r for r in rows if r["status"] != "ok" or not STEPS[step].text(r)]
        write_table(pa.Table.from_pylist(dropped, schema=STEPS[step].schema), dropped_tmp / f"{step}.parquet")
    _swap_in(kept_tmp, run_dir / "synthetic")
    _swap_in(dropped_tmp, work / "dropped")
    return counts


# --- the stage -------------------------------------------------------------------------------------
def synthesize(run_dir: Path, cfg, runner) -> dict:
    """The stage on any runner (`LocalRunner`, `RayRunner`); returns the manifest."""
    run_dir = Path(run_dir).resolve()
    if manifest.is_complete(run_dir, STAGE, cfg):
        return manifest.read_manifest(run_dir, STAGE)
    s, work, t0 = cfg.synth, run_dir / STAGE, time.time()
    origin, docs = read_documents(run_dir, cfg)
    passages = prose_seeds(docs, s)
    seeds = {"rewrite": passages, "revise": revise_seeds(passages), "reversal": code_seeds(docs, s), "qa": passages}
    order = [st for st in STEPS if st in s.steps]  # recipe order; plurality last
    plans: dict[str, list[Chunk]] = {}
    rows: dict[str, list[dict]] = {}
    redone: dict[str, int] = {}
    for phase in ([st for st in order if st != "plurality"], [st for st in order if st == "plurality"]):
        if phase == ["plurality"]:
            seeds["plurality"] = plurality_seeds(rows.get("qa", []), cfg)
        for st in phase:
            plans[st] = plan_chunks(st, seeds[st], cfg, runner.name)
        ran = _run_missing([c for st in phase for c in plans[st]], runner, s, work)  # one pipeline per phase
        for st in phase:
            redone[st] = sum((st, c.chunk_id) in ran for c in plans[st])
            rows[st] = read_rows(plans[st], work)
        if "qa" in phase:
            dedupe_questions(rows["qa"])
    for st in order:
        check_counts(st, seeds[st], rows[st])
    _clean_stale(work, plans)
    outputs = write_outputs(run_dir, work, {st: (seeds[st], rows[st]) for st in order}, s)
    report = {"teacher": runner.name, "seeds_from": origin, "outputs": outputs,
              "steps": {st: step_report(st, seeds[st], rows[st], len(plans[st]), redone[st]) for st in order},
              "wall_s": round(time.time() - t0, 1), **runner.timings()}
    work.mkdir(parents=True, exist_ok=True)
    (work / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    for st, r in report["steps"].items():
        print(f"synthesize: {st}: {r['seeds_in']} seeds -> {r['rows_out']} rows, {r['ok']} kept "
              f"({r['acceptance_rate']}); dropped {r['dropped']}", flush=True)
    counts = {"outputs": outputs, "steps": {st: {k: v for k, v in r.items() if k != "examples"}
                                             for st, r in report["steps"].items()}}
    manifest.write_manifest(run_dir, STAGE, cfg, inputs={"seeds_from": origin, "teacher": runner.name},
                            outputs={"synthetic": str(run_dir / "synthetic"), "dropped": str(work / "dropped"),
                                     "report": str(work / "report.json")},
                            counts=counts, timings={"wall_s": report["wall_s"], **runner.timings()})
    return manifest.read_manifest(run_dir, STAGE)


def run_synthesize(run_dir: Path, cfg, fleet: dict | None = None) -> dict:
    """The stage on Ray: `fleet` (a running sampler app's {"deployment", "app"}) is used as the
    teacher and left running; without it the stage serves the teacher model itself."""
    from actors.ray_session import ray_session

    run_dir = Path(run_dir).resolve()
    if manifest.is_complete(run_dir, STAGE, cfg):
        return manifest.read_manifest(run_dir, STAGE)
    runner = RayRunner(run_dir, cfg, fleet)
    with ray_session(min_cpus=8):  # the fleet's replica and ingress each reserve a CPU, like serve's
        try:
            return synthesize(run_dir, cfg, runner)
        finally:
            runner.close()
