"""The synthesize stage (phi4ray/synth, actors/data/synthesize.py): seeds, chunked resume, outputs, counts, report.

Most tests run the stage's work (phi4ray.data.synth.runner.synthesize) in this process on a scripted
teacher (`LocalRunner` + `ScriptedEngine`), through the stage runner (phi4ray.run.stage.run_stage:
skip-if-complete, manifest): no Ray, no model. One test runs the whole stage on Ray Data through the real
vLLM sampler fleet of the session fixtures, with the random tiny model as teacher: it writes junk,
so nearly everything is dropped; that test checks files, schemas, counts and reasons, not quality.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.data.synthesize import STAGE, RayRunner, build_engine
from actors.data.synthesize import run as run_on_ray
from phi4ray.data.synth.llm import ScriptedEngine
from phi4ray.data.synth.outputs import OUT_SCHEMA, check_counts
from phi4ray.data.synth.runner import LocalRunner, synthesize
from phi4ray.data.synth.seeds import code_seeds, pick_documents, prose_seeds
from phi4ray.data.synth.steps import STEPS
from phi4ray.data.synth.templates import load_template
from phi4ray.model.phi4_tokenizer import IM_END, phi4_tokenizer
from phi4ray.presets import run_preset
from phi4ray.run import manifest
from phi4ray.run.errors import ConfigError
from phi4ray.run.overrides import OverrideError, apply_overrides
from phi4ray.run.stage import is_current, run_stage
from phi4ray.serve.sampling import Sample

TOPICS = ["rivers", "glaciers", "rivers", "volcanoes", "tides"]  # "rivers" twice: a question repeated across seeds
CODE = {
    "add": 'def add(a, b):\n    """Sum.\n\n    >>> add(2, 3)\n    5\n    """\n    return a + b\n',
    "scale": 'def scale(xs, k):\n    """Each item times k.\n\n    >>> scale([1, 2], 3)\n    [3, 6]\n    """\n'
             '    return [x * k for x in xs]\n',
    "clamp": "def clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    return min(x, hi)\n",
}

# what the scripted teacher writes back from its own instruction: clamp's instruction said too little
REGENERATED = {"clamp": "def clamp(x):\n    return x\n"}


def passage(topic: str, i: int) -> str:
    return (f"{topic.capitalize()} shape the land in slow ways. Document {i} notes that {topic} carry material "
            f"from high ground to low ground over many years, and that the amount carried grows with the speed "
            f"of the flow. Faster flow therefore moves larger stones, while slow flow leaves fine sand behind.")


def write_curated(run_dir: Path) -> None:
    web = [{"doc_id": f"doc{i}", "text": passage(t, i)} for i, t in enumerate(TOPICS)]
    module = "import os\n\n\n" + "\n\n".join(CODE.values()) + "\n\n@staticmethod\ndef decorated(a, b, c):\n    return a\n"
    for source, rows in (("web", web), ("code", [{"doc_id": "mod.py", "text": module}])):
        (run_dir / "curated" / source).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), run_dir / "curated" / source / "part-0.parquet")


def _between(prompt: str, tag: str) -> str:
    return prompt.split(f"[{tag}]\n", 1)[1].split(f"\n[End of {tag}]", 1)[0]


def teacher(prompt: str) -> str | list[str]:
    """A scripted teacher that answers every template well enough to be kept (or, for arithmetic,
    to be overruled): it lets the whole funnel show up in the outputs."""
    words = ("The idea is that moving water sorts material by size, so we can reason from speed to what is "
             "left behind. Faster currents lift heavier grains; as a river widens it slows, drops the coarse "
             "sand first and carries fine clay further out to sea")
    if "Write ONE new exercise" in prompt:
        return f"Exercise:\nA stream slows down near its mouth. What settles first?\n\nSolution:\n{words}."
    if "discussion between a curious Student" in prompt:
        return f"Student: Why does sand settle first?\nTeacher: {words}."
    if "Write ONE problem that needs several steps" in prompt:
        return f"Problem:\nTwo stones...\n\nSolution:\nStep 1: {words}.\nFinal answer: \\boxed{{2}}"
    if "You are reviewing a response" in prompt:
        return "reasoning: 9\nfactual_accuracy: 9\nfeedback: none"
    if "Complete the task below" in prompt:
        return f"{words}. \\boxed{{sand}}"
    if "Write the instruction that a user could give" in prompt:
        name = re.search(r"def (\w+)", prompt).group(1)
        return f"Instruction:\nWrite the function {name} as described."
    if "Write Python code that follows the instruction" in prompt:
        name = re.search(r"Write the function (\w+) as described", prompt).group(1)
        return f"```python\n{REGENERATED.get(name, CODE[name])}```"
    if "Find chains of deduction" in prompt:
        text = _between(prompt, "Passage")
        topic = text.split()[0].lower()
        return (f"Question: What do {topic} carry from high ground to low ground?\n"
                f"Reasoning: the passage says {topic} carry material from high ground to low ground.\n"
                "Answer: material")
    if "Answer the question below" in prompt:
        return ["so \\boxed{4}", "so \\boxed{4}", "so \\boxed{4}", "so \\boxed{5}"]
    if prompt.startswith("You are Solver A"):
        return "2 + 2 = 4\n\\boxed{4}"
    if prompt.startswith("You are Solver B"):  # slips on the arithmetic, which the referee settles for A
        return "check: \\boxed{5}" if _between(prompt, "Question").startswith("What is") else "check: \\boxed{4}"
    if prompt.startswith("You are the referee"):
        return "Differences: none\nCorrect: A\nSolution:\nTwo and two make four.\n\\boxed{4}"
    raise AssertionError(f"unscripted prompt: {prompt[:80]!r}")


def config(**synth):
    # the verified toy source off (the tiny preset's is on): these tests look at the teacher's steps;
    # test_toy_source_beside_the_steps turns it on
    base = {"seeds": 4, "chunk_size": 2, "arith_questions": 2, "plurality.n_answers": 4, "passage_min_chars": 100,
            "passage_max_chars": 1000, "call.backoff_s": 0.0, "call.backoff_max_s": 0.0, "toy_problems": 0}
    return apply_overrides(run_preset("tiny"), [f"synth.{k}={v}" for k, v in {**base, **synth}.items()])


def tables(run_dir: Path) -> dict[str, list[dict]]:
    """Every output file's rows, by path relative to the run dir."""
    files = sorted((run_dir / "synthetic").rglob("*.parquet")) + sorted((run_dir / "synthesize" / "dropped").glob("*"))
    return {str(f.relative_to(run_dir)): pq.read_table(f).to_pylist() for f in files}


def report(run_dir: Path) -> dict:
    r = json.loads((run_dir / "synthesize" / "report.json").read_text())
    r.pop("wall_s")
    for step in r["steps"].values():
        step.pop("chunks_run")  # how much a run had to do differs between a resumed and a clean run
    return r


def local_ctx(run_dir: Path, cfg) -> SimpleNamespace:
    """What run_stage needs of a context, without Ray."""
    return SimpleNamespace(run_dir=Path(run_dir).resolve(), cfg=cfg, options={})


def run_local(run_dir: Path, cfg, runner) -> dict:
    """The stage through the stage runner, its chunks on `runner` in this process; its manifest.
    A fleet teacher needs no model folder here: the scripted engine is the teacher."""
    stage = dataclasses.replace(STAGE, run=lambda ctx: synthesize(ctx.run_dir, ctx.cfg, runner), check=None,
                                needs_ray=False)
    return run_stage(stage, local_ctx(run_dir, cfg), echo=lambda line: None)[0]


def assert_counts_add_up(run_dir: Path, rep: dict) -> None:
    """Per step: seeds in == distinct seed_ids of kept + dropped rows; rows out == kept + dropped."""
    for step, r in rep["steps"].items():
        kept = [row for f in (run_dir / "synthetic").rglob(f"{step}.parquet") for row in pq.read_table(f).to_pylist()]
        dropped = pq.read_table(run_dir / "synthesize" / "dropped" / f"{step}.parquet").to_pylist()
        assert all(row["step"] == step for row in kept)
        assert len({row["seed_id"] for row in kept + dropped}) == r["seeds_in"], step
        assert len(kept) + len(dropped) == r["rows_out"] and len(kept) == r["ok"], step
        assert sum(r["dropped"].values()) == len(dropped), step
        assert r["acceptance_rate"] == (round(r["ok"] / r["rows_out"], 4) if r["rows_out"] else None)


# --- Ray-free: the stage core on a scripted teacher ------------------------------------------------
def test_seeds_are_deterministic_passages_and_functions(tmp_path):
    write_curated(tmp_path)
    cfg = config()
    origin, docs = pick_documents(tmp_path, cfg)
    assert origin == "curated" and sorted(docs) == ["code", "web"]
    passages = prose_seeds(docs, cfg.synth)
    assert len(passages) == 4 and all(p["seed_id"].startswith("web:doc") and p["source"] == "web" for p in passages)
    assert passages == prose_seeds(pick_documents(tmp_path, cfg)[1], cfg.synth)  # same seeds, same ids
    funcs = code_seeds(docs, config(seeds=2).synth)
    # doctested functions first; the decorated one (it needs its module) and the import never
    assert [f["seed_id"] for f in funcs] == ["code:mod.py::add@4", "code:mod.py::scale@13"]
    assert funcs[0]["code"] == CODE["add"].rstrip("\n")
    assert {f["seed_id"].split("::")[1].split("@")[0] for f in code_seeds(docs, cfg.synth)} == set(CODE)


def test_stage_outputs_counts_report_and_noop_rerun(tmp_path):
    write_curated(tmp_path)
    cfg = config()
    engine = ScriptedEngine(teacher)
    m = run_local(tmp_path, cfg, LocalRunner(engine, "scripted"))
    assert m["complete"] and is_current(STAGE, local_ctx(tmp_path, cfg))
    rep = report(tmp_path)
    assert rep["seeds_from"] == "curated" and rep["teacher"] == "scripted"
    out = tables(tmp_path)
    assert set(out) == {"synthetic/web_rewrites/rewrite.parquet",
                        *(f"synthetic/synthetic/{s}.parquet" for s in STEPS),
                        *(f"synthesize/dropped/{s}.parquet" for s in STEPS), "synthetic/long/long.parquet"}
    for path in out:
        schema = pq.read_schema(tmp_path / path)
        assert schema.equals(OUT_SCHEMA if path.startswith("synthetic/") else STEPS[Path(path).stem].schema), path
    assert_counts_add_up(tmp_path, rep)
    steps = rep["steps"]
    assert m["counts"]["seeds"] == sum(r["seeds_in"] for r in steps.values())  # the report table's headline
    assert m["counts"]["kept"] == sum(len(rows) for p, rows in out.items()
                                      if p.startswith("synthetic/") and not p.startswith("synthetic/long/"))
    assert m["counts"]["dropped"] == sum(len(rows) for p, rows in out.items() if p.startswith("synthesize/"))
    assert {s: steps[s]["seeds_in"] for s in STEPS} == {"rewrite": 4, "revise": 4, "reversal": 3, "qa": 4,
                                                        "plurality": 3 + 2,  # 3 distinct qa questions + 2 arithmetic
                                                        "agents": 3 + 2}  # the same questions
    assert steps["rewrite"]["ok"] == 12 and len(out["synthetic/web_rewrites/rewrite.parquet"]) == 4  # discussions
    assert steps["reversal"]["dropped"] == {"low_fidelity": 1}  # clamp: no tests, instruction says too little
    assert steps["qa"]["dropped"] == {"duplicate_question_across_seeds": 1}
    plur = {r["seed_id"]: r for r in out["synthetic/synthetic/plurality.parquet"]}
    assert sum(i.startswith("qa:") for i in plur) == 3 and sum(i.startswith("arith:") for i in plur) == 2
    assert all(json.loads(r["meta"])["majority_answer"] == "4" for r in plur.values())
    agents = {r["seed_id"]: json.loads(r["meta"]) for r in out["synthetic/synthetic/agents.parquet"]}
    assert agents.keys() == plur.keys() and steps["agents"]["ok"] == 5 and steps["agents"]["parse_rate"] == 1.0
    assert {i: (m["solvers_agree"], m["agrees_with"]) for i, m in agents.items()} == {
        i: (True, "both") if i.startswith("qa:") else (False, "a") for i in plur}
    assert out["synthetic/synthetic/agents.parquet"][0]["text"].endswith("Assistant: Two and two make four.\n\\boxed{4}")
    rev = out["synthetic/synthetic/reversal.parquet"][0]
    assert rev["text"].startswith("User: Write the function add") and "```python\ndef add(a, b):" in rev["text"]
    for s in STEPS:
        ex = steps[s]["examples"]
        assert len(ex) == 3 and len({e["seed_id"] for e in ex}) == 3 and ex[0]["status"] == "ok"
        assert ex[0]["seed"] and ex[0]["output"]
    calls = len(engine.calls)
    again = run_local(tmp_path, cfg, LocalRunner(engine, "scripted"))
    assert again == m and len(engine.calls) == calls  # complete: a no-op


def test_toy_source_beside_the_steps(tmp_path):
    """synth.toy_problems: verified problems land with the steps' outputs (RUN/synthetic/synthetic,
    where the mixture's synthetic source reads), their rejects with the dropped rows; the counts
    and the report add them up; the steps' own outputs are those of a run without it."""
    write_curated(tmp_path / "with")
    write_curated(tmp_path / "without")
    m = run_local(tmp_path / "with", config(steps="qa,plurality", toy_problems=40),
                  LocalRunner(ScriptedEngine(teacher), "scripted"))
    run_local(tmp_path / "without", config(steps="qa,plurality"), LocalRunner(ScriptedEngine(teacher), "scripted"))
    out, rep = tables(tmp_path / "with"), report(tmp_path / "with")
    docs, rejects = out["synthetic/synthetic/toy.parquet"], out["synthesize/dropped/toy.parquet"]
    assert pq.read_schema(tmp_path / "with" / "synthetic" / "synthetic" / "toy.parquet").equals(OUT_SCHEMA)
    assert rep["toy"]["generated"] == 40 == len(docs) + len(rejects) and rep["toy"]["kept"] == len(docs) > 20
    assert rejects and {r["status"] for r in rejects} == {"not_prime"} == set(rep["toy"]["dropped"])
    assert all(d["step"] == "toy" and d["text"].startswith("User: ") for d in docs)
    assert m["counts"]["toy"] == {"generated": 40, "kept": len(docs), "rejected": len(rejects)}
    assert m["counts"]["kept"] == sum(len(rows) for p, rows in out.items()
                                      if p.startswith("synthetic/") and not p.startswith("synthetic/long/"))
    assert m["counts"]["dropped"] == sum(len(rows) for p, rows in out.items() if p.startswith("synthesize/"))
    assert rep["outputs"]["synthetic"] == len(docs) + rep["steps"]["qa"]["ok"] + rep["steps"]["plurality"]["ok"]
    assert set(rep["steps"]) == {"qa", "plurality"}  # a source beside the steps, not one of them
    assert_counts_add_up(tmp_path / "with", rep)
    without = tables(tmp_path / "without")
    assert {p: rows for p, rows in out.items() if "toy" not in p} == without
    # the config decides it: another number of problems is another stage key
    assert not is_current(STAGE, local_ctx(tmp_path / "with", config(steps="qa,plurality", toy_problems=41)))


class CrashAfter(LocalRunner):
    """Runs `n` chunks, then dies as a driver would (the chunks after it never start)."""

    def __init__(self, engine, n: int):
        super().__init__(engine, "scripted")
        self.left, self.ran = n, 0

    def run(self, chunks, s, work):
        for c in chunks:
            if self.left == 0:
                raise KeyboardInterrupt("crash")
            super().run([c], s, work)
            self.left -= 1
            self.ran += 1


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    for d in (clean, crashed):
        write_curated(d)
    cfg = config()
    run_local(clean, cfg, LocalRunner(ScriptedEngine(teacher), "scripted"))
    with pytest.raises(KeyboardInterrupt):
        run_local(crashed, cfg, CrashAfter(ScriptedEngine(teacher), 3))
    assert len(list((crashed / "synthesize").rglob("*.parquet"))) == 3 and not (crashed / "synthetic").exists()
    resumed = CrashAfter(ScriptedEngine(teacher), -1)
    run_local(crashed, cfg, resumed)
    total = sum(r["chunks"] for r in report(clean)["steps"].values())
    assert resumed.ran == total - 3  # only the chunks the crash lost
    assert tables(crashed) == tables(clean) and report(crashed) == report(clean)

    # a lost chunk file (and manifest) is redone alone, with the same rows
    victim = sorted((crashed / "synthesize" / "revise").glob("*.parquet"))[1]
    victim.unlink()
    manifest.manifest_path(crashed, "synthesize").unlink()
    engine = ScriptedEngine(teacher)
    run_local(crashed, cfg, LocalRunner(engine, "scripted"))
    assert victim.is_file() and engine.calls and all("Passage" in p for call in engine.calls for p in call)
    assert len({_between(p, "Passage") for call in engine.calls for p in call}) == 2  # the chunk's 2 seeds
    assert tables(crashed) == tables(clean)
    assert json.loads(manifest.manifest_path(crashed, "synthesize").read_text())["counts"]["steps"]["revise"][
        "chunks_run"] == 1


def test_a_changed_step_config_redoes_only_that_step(tmp_path):
    write_curated(tmp_path)
    run_local(tmp_path, config(), LocalRunner(ScriptedEngine(teacher), "scripted"))
    before = {s: sorted(p.name for p in (tmp_path / "synthesize" / s).glob("*")) for s in STEPS}
    cfg = config(**{"rewrite.min_words": 200})
    engine = ScriptedEngine(teacher)
    run_local(tmp_path, cfg, LocalRunner(engine, "scripted"))
    after = {s: sorted(p.name for p in (tmp_path / "synthesize" / s).glob("*")) for s in STEPS}
    assert all(after[s] == before[s] for s in STEPS if s != "rewrite")
    assert len(after["rewrite"]) == 2 and not set(after["rewrite"]) & set(before["rewrite"])  # stale files gone
    # only rewrite asked the teacher again: per chunk (2), one call per answer form sent (kinds with a
    # guide of their own, and the free-form ones together; one when no guides are sent)
    forms = {json.dumps(load_template(f"rewrite_{k}").guide if cfg.synth.call.structured else None)
             for k in cfg.synth.rewrite.kinds}
    assert len(engine.calls) == 2 * len(forms) and all("[Passage]" in p for call in engine.calls for p in call)
    rep = report(tmp_path)
    assert rep["steps"]["rewrite"]["dropped"] == {"too_short": 12} and "web_rewrites" not in {
        p.parent.name for p in (tmp_path / "synthetic").rglob("*.parquet")}
    assert_counts_add_up(tmp_path, rep)


def test_failed_calls_are_rows_with_a_reason_and_never_lose_a_seed(tmp_path):
    write_curated(tmp_path)
    cfg = config(**{"call.retries": 1})
    down = ScriptedEngine(teacher, fail=lambda prompt, attempt: "Find chains of deduction" in prompt)
    run_local(tmp_path, cfg, LocalRunner(down, "scripted"))
    rep = report(tmp_path)
    assert rep["steps"]["qa"]["dropped"] == {"llm_error": 4} and rep["steps"]["qa"]["llm_errors"] == 4
    # arithmetic only: qa kept no question
    assert rep["steps"]["plurality"]["seeds_in"] == rep["steps"]["agents"]["seeds_in"] == 2
    assert_counts_add_up(tmp_path, rep)
    with pytest.raises(AssertionError, match="step 'qa'.*missing \\['b'\\]"):
        check_counts("qa", [{"seed_id": "a"}, {"seed_id": "b"}], [{"seed_id": "a", "status": "ok"}])


def test_builtin_corpus_when_nothing_is_curated(tmp_path):
    cfg = apply_overrides(config(seeds=2, arith_questions=1, steps="rewrite,reversal"), ["data.builtin_max_docs=6"])
    m = run_local(tmp_path, cfg, LocalRunner(ScriptedEngine(lambda p: "too short"), "scripted"))
    assert m["inputs"]["seeds_from"] == "builtin/6" and (tmp_path / "builtin" / "6" / "code").is_dir()
    rep = report(tmp_path)
    assert list(rep["steps"]) == ["rewrite", "reversal"] and rep["steps"]["rewrite"]["seeds_in"] == 2
    assert rep["outputs"] == {"web_rewrites": 0, "synthetic": 0} and not any((tmp_path / "synthetic").iterdir())
    assert_counts_add_up(tmp_path, rep)


@pytest.fixture
def teacher_endpoint(monkeypatch):
    """An OpenAI-compatible chat endpoint on loopback, answering with the scripted teacher; it wants
    the API key from the env var the config names."""
    monkeypatch.setenv("SYNTH_TEST_KEY", "k-123")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions" or self.headers.get("Authorization") != "Bearer k-123":
                self.send_response(401)
                self.end_headers()
                return
            reply = teacher(body["messages"][-1]["content"])
            texts = [reply] * body["n"] if isinstance(reply, str) else reply[:body["n"]]
            out = json.dumps({"choices": [{"index": i, "message": {"role": "assistant", "content": t},
                                           "finish_reason": "stop"} for i, t in enumerate(texts)]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_endpoint_teacher_from_the_config(tmp_path, teacher_endpoint):
    write_curated(tmp_path)
    # (overrides apply one by one, each validated: the endpoint's url and name come before teacher=endpoint)
    cfg = config(teacher_url=teacher_endpoint, teacher_name="big-teacher", teacher_api_key_env="SYNTH_TEST_KEY",
                 teacher="endpoint", steps="qa,plurality")
    ray_runner = RayRunner(local_ctx(tmp_path, cfg))  # only its engine spec: the chunks run here, without Ray
    runner = LocalRunner(build_engine(ray_runner.spec()), ray_runner.name)
    m = run_local(tmp_path, cfg, runner)
    runner.close()
    assert m["inputs"]["teacher"] == f"{teacher_endpoint}#big-teacher"
    rep = report(tmp_path)
    assert rep["steps"]["qa"]["ok"] == 3 and rep["steps"]["plurality"]["ok"] == 5
    assert_counts_add_up(tmp_path, rep)


@pytest.mark.parametrize("override, field", [
    ("synth.chunk_size=0", "synth.chunk_size"), ("synth.steps=rewrite,sing", "synth.steps"),
    ("synth.teacher=endpoint", "synth.teacher_url"), ("synth.passage_min_chars=5000", "synth.passage_min_chars"),
    ("synth.web_rewrite_kinds=poem", "synth.web_rewrite_kinds"), ("synth.teacher_mode=grpc", "synth.teacher_mode"),
    ("synth.plurality.n_answers=1", "n_answers"), ("synth.plurality.sampling.temperature=0", "temperature=0"),
    ("synth.rewrite.sampling.temperature=3", "temperature"),
])
def test_config_errors_name_the_field(override, field):
    with pytest.raises((ConfigError, OverrideError), match=field):
        apply_overrides(run_preset("tiny"), [override])
    cfg = apply_overrides(run_preset("tiny"), ["synth.reversal.limits.wall_s=3", "synth.call.timeout_s=none"])
    assert cfg.synth.reversal.limits.wall_s == 3.0 and cfg.synth.call.timeout_s is None


def test_fleet_engine_renders_decodes_seeds_and_isolates_failures():
    from actors.serve.fleet_engine import FleetEngine  # deferred: its actors.serve.sampler_client import loads Ray Serve

    tok = phi4_tokenizer()

    class FakeSampler:
        def __init__(self):
            self.requests = []

        async def sample(self, req):
            self.requests.append(req)
            if tok.decode(req.prompt_ids).count("bad"):
                raise ValueError("prompt too long")
            ids = tok.encode_ordinary("hello") + [IM_END]
            return [Sample(ids, [0.0] * len(ids), "stop")] * req.n

    fake = FakeSampler()
    engine = FleetEngine(seed=7, sampler=fake)
    out = asyncio.run(engine.generate(["good", "bad", "good"], n=2, max_tokens=5, temperature=0.5))
    assert out[0] == out[2] == ["hello", "hello"] and isinstance(out[1], ValueError)
    r0, _, r2 = fake.requests
    assert r0.prompt_ids == tok.render_chat([{"role": "user", "content": "good"}], add_generation_prompt=True).ids
    assert (r0.n, r0.max_tokens, r0.temperature, r0.stop_ids) == (2, 5, 0.5, [IM_END])
    assert r0.seed == r2.seed is not None and r0.seed != fake.requests[1].seed  # per prompt, reproducible
    assert FleetEngine(sampler=fake)._seed_for("good") is None


# --- the real fleet: Ray Data actors + Serve + vLLM ------------------------------------------------
@pytest.mark.ray
def test_ray_pick_equals_the_local_pick(ray_cluster, tmp_path):
    """The Ray Data pass picks the documents the in-process path picks: ids or `<file>:<row>`,
    blank texts skipped, a blank-only source offering none, a source over its pool trimmed."""
    from actors.data.synthesize import pick_documents as ray_pick  # deferred: with Ray, as below

    words = passage("rivers", 0)
    for j in range(4):
        for source, rows in (("web", [{"doc_id": f"w{j}-{i}", "text": f"{i} {words}"} for i in range(12)]),
                             ("books", [{"text": f"{i} {words}" if i % 3 else " "} for i in range(12)])):
            (tmp_path / "curated" / source).mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), tmp_path / "curated" / source / f"part-{j}.parquet")
    (tmp_path / "curated" / "blank").mkdir()
    pq.write_table(pa.table({"text": pa.array([None], pa.string())}), tmp_path / "curated" / "blank" / "p.parquet")
    cfg = config(seeds=3)
    origin, got = ray_pick(tmp_path, cfg)
    assert (origin, got) == pick_documents(tmp_path, cfg)
    assert sorted(got) == ["books", "web"] and all(len(v) == 12 for v in got.values())  # 4 * seeds of 48, 32
    assert any(d["doc_id"].startswith("books/part-") for d in got["books"])


@pytest.mark.vllm
@pytest.mark.ray
def test_stage_through_the_real_fleet(sampler_app, tiny_export, tmp_path):
    write_curated(tmp_path)
    # short answers, so the prompts fit the fixture's 512-token context; greedy everywhere but in
    # plurality, whose N answers must differ: it samples, seeded per prompt by the fleet engine
    sampling = {f"{s}.{k}": v for s in ("rewrite.sampling", "revise.generate", "revise.critique", "revise.revise",
                                        "reversal.instruction", "reversal.code", "qa.sampling", "plurality.sampling",
                                        "agents.solver_a", "agents.solver_b", "agents.referee")
                for k, v in (("max_tokens", 16), ("temperature", 0.8 if s.startswith("plurality") else 0.0))}
    cfg = config(seeds=2, chunk_size=1, actors=2, arith_questions=2, teacher_model=str(tiny_export),
                 **{"plurality.n_answers": 4, "revise.max_rounds": 1, "call.retries": 0, "passage_max_chars": 600},
                 **sampling)
    from actors.context import RunContext  # deferred: imports Ray; the tests above run without it
    from actors.serve.fleet import App  # deferred: imports Ray Serve, as above

    app = App(name=sampler_app["app"], url=sampler_app["url"] + "/v1", deployment=sampler_app["deployment"],
              model_id=sampler_app["model_id"], models={sampler_app["model_id"]: sampler_app["deployment"]})
    stage = dataclasses.replace(STAGE, run=lambda ctx: run_on_ray(ctx, app=app))  # the session's fleet, left up

    def run_synthesize() -> dict:
        with RunContext.local(tmp_path, cfg) as ctx:
            return run_stage(stage, ctx)[0]

    m = run_synthesize()
    assert m["complete"] and m["inputs"]["teacher"] == str(Path(tiny_export).resolve())
    rep = report(tmp_path)
    assert {s: rep["steps"][s]["seeds_in"] for s in STEPS} == {"rewrite": 2, "revise": 2, "reversal": 2, "qa": 2,
                                                               "plurality": rep["steps"]["plurality"]["seeds_in"],
                                                               "agents": rep["steps"]["plurality"]["seeds_in"]}
    assert rep["steps"]["plurality"]["seeds_in"] >= 2  # the arithmetic problems, plus any qa question kept
    assert all(r["chunks"] == r["chunks_run"] == r["seeds_in"] for r in
               json.loads((tmp_path / "synthesize" / "report.json").read_text())["steps"].values())
    assert_counts_add_up(tmp_path, rep)
    for s, r in rep["steps"].items():
        assert r["llm_errors"] == 0, (s, r["dropped"])  # the fleet answered every call
        assert len({e["seed_id"] for e in r["examples"]}) == min(3, r["seeds_in"]) and all(
            e["seed"] and e["status"] != "ok" for e in r["examples"])  # the random model's rows are all dropped
    first = tables(tmp_path)
    for path in first:
        assert pq.read_schema(tmp_path / path).equals(
            OUT_SCHEMA if path.startswith("synthetic/") else STEPS[Path(path).stem].schema), path
    # what the random model wrote went through the step's checks (the first LLM step answered)
    assert rep["steps"]["rewrite"]["rows_out"] == 6 and rep["steps"]["qa"]["rows_out"] >= 2

    assert run_synthesize() == m  # complete: a no-op

    # lose a greedy chunk and a sampled one: both are redone alone, with the same rows
    victims = [sorted((tmp_path / "synthesize" / s).glob("*.parquet"))[0] for s in ("rewrite", "plurality")]
    for v in victims:
        v.unlink()
    manifest.manifest_path(tmp_path, "synthesize").unlink()
    again = run_synthesize()
    assert all(v.is_file() for v in victims)
    assert {s: r["chunks_run"] for s, r in again["counts"]["steps"].items() if r["chunks_run"]} == {
        "rewrite": 1, "plurality": 1}
    assert tables(tmp_path) == first and report(tmp_path) == rep


def test_chunk_ids_change_with_structured_output_but_not_with_how_calls_are_made():
    """Guided answers are other rows: a switch of synth.call.structured must redo the chunks,
    never reuse the unguided ones; retries or concurrency change no row and keep them."""
    from phi4ray.data.synth.chunks import plan_chunks
    seeds = [{"seed_id": f"s{i}", "text": f"passage {i}"} for i in range(3)]
    ids = lambda cfg: [c.chunk_id for c in plan_chunks("rewrite", seeds, cfg, "teacher")]  # noqa: E731
    base = config()
    assert ids(apply_overrides(base, ["synth.call.structured=true"])) != ids(base)
    assert ids(apply_overrides(base, ["synth.call.retries=5", "synth.call.concurrency=3"])) == ids(base)
