"""Midtraining's synthetic long rows (phi4ray/data/synth/long.py): qa's kept pairs asked after their
whole source document, written by the synthesize stage to RUN/synthetic/long and counted in its
report. No Ray, no model: the stage runs on test_synthesize_stage's scripted teacher."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from actors.data.synthesize import STAGE
from phi4ray.data.synth.llm import ScriptedEngine
from phi4ray.data.synth.long import OUTCOMES, LongLimits, long_limits, long_rows
from phi4ray.data.synth.outputs import OUT_SCHEMA
from phi4ray.data.synth.runner import LocalRunner
from phi4ray.data.synth.seeds import prose_seeds
from phi4ray.run.overrides import apply_overrides
from phi4ray.run.stage import is_current
from tests.test_synthesize_stage import TOPICS, config, local_ctx, passage, run_local, teacher, write_curated

LONG_FILE = Path("synthetic") / "long" / "long.parquet"


def long_run(run_dir: Path, cfg) -> tuple[dict, list[dict]]:
    write_curated(run_dir)
    m = run_local(run_dir, cfg, LocalRunner(ScriptedEngine(teacher), "scripted"))
    return m, pq.read_table(run_dir / LONG_FILE).to_pylist()


def test_long_rows_hold_the_source_document_then_the_question_then_the_answer(tmp_path):
    cfg = config(steps="qa")
    m, rows = long_run(tmp_path / "a", cfg)
    assert pq.read_schema(tmp_path / "a" / LONG_FILE).equals(OUT_SCHEMA)
    rep = json.loads((tmp_path / "a" / "synthesize" / "report.json").read_text())
    qa_ok = rep["steps"]["qa"]["ok"]
    limits = long_limits(cfg)
    assert qa_ok == 3 == len(rows) and (limits.min_chars, limits.max_chars) == (2 * 128 * 4, 4 * 128 * 4)
    # every kept pair has one outcome, here all made; the pairs are in neither `kept` nor `dropped`
    assert rep["long"] == {"pairs": 3, "made": 3, "too_short": 0, "too_long": 0, "no_document": 0,
                           "min_chars": limits.min_chars, "max_chars": limits.max_chars}
    assert m["counts"]["long"] == {k: v for k, v in rep["long"].items() if not k.endswith("_chars")}
    assert m["counts"]["kept"] == rep["outputs"]["synthetic"] + rep["outputs"]["web_rewrites"]
    qa_docs = {r["seed_id"]: r for r in pq.read_table(tmp_path / "a" / "synthetic" / "synthetic" / "qa.parquet")
               .to_pylist()}
    assert {r["seed_id"] for r in rows} == set(qa_docs)
    docs = {f"doc{i}": passage(t, i) for i, t in enumerate(TOPICS)}
    for row in rows:
        meta, text = json.loads(row["meta"]), row["text"]
        assert row["step"] == "long" and row["kind"] == "qa" and row["seed_source"] == "web"
        source = row["seed_id"].split(":", 1)[1].split("#")[0]  # web:doc3#0 -> doc3
        # the whole source document, among the other web documents (all short enough to fit whole)
        assert meta["documents"][meta["source_document"]] == source and not meta["source_cut"]
        assert sorted(meta["documents"]) == sorted(docs)
        body, _, qa = text.rpartition("\n\nUser: ")
        assert body == "\n\n".join(docs[d] for d in meta["documents"])
        # then the question, and the answer last: the qa step's own document for the pair
        assert "User: " + qa == qa_docs[row["seed_id"]]["text"]
        assert qa.startswith(meta["question"]) and text.endswith("Answer: " + meta["answer"])
        assert limits.min_chars <= len(text) <= limits.max_chars
    assert len({json.loads(r["meta"])["source_document"] for r in rows}) > 1  # the needle is not always first

    # the same run gives the same rows; a run whose midtraining context differs is another config
    _, again = long_run(tmp_path / "b", cfg)
    assert again == rows
    assert is_current(STAGE, local_ctx(tmp_path / "a", cfg))
    assert not is_current(STAGE, local_ctx(tmp_path / "a", apply_overrides(cfg, ["midtrain.context_multiplier=2"])))


def test_too_short_rows_are_counted_not_written(tmp_path):
    """A pretraining context whose 2 x seq_len the run's web documents cannot reach: no row, no file."""
    cfg = apply_overrides(config(steps="qa"), ["data.seq_len=256"])  # min 2048 chars; the five documents ~1.4K
    write_curated(tmp_path)
    m = run_local(tmp_path, cfg, LocalRunner(ScriptedEngine(teacher), "scripted"))
    assert m["counts"]["long"] == {"pairs": 3, "made": 0, "too_short": 3, "too_long": 0, "no_document": 0}
    assert not (tmp_path / "synthetic" / "long").exists()


def qa_row(seed_id: str, question: str = "What moves the stones?", answer: str = "the flow", status: str = "ok",
           pair_index: int = 0) -> dict:
    return {"seed_id": seed_id, "template_id": "qa_extract@test", "status": status, "pair_index": pair_index,
            "question": question, "reasoning": "the passage says the flow moves the stones.", "answer": answer,
            "source": "web"}


def test_every_outcome_and_a_long_document_cut_around_its_passage():
    s = config(seeds=40, passage_min_chars=50, passage_max_chars=400).synth  # every passage a seed
    paras = [f"Paragraph {i} of the long document. " + passage("rivers", i) for i in range(12)]
    docs = {"web": [{"source": "web", "doc_id": "long", "text": "\n\n".join(paras), "rank": 0, "score": 1.0}],
            "books": [{"source": "books", "doc_id": "tiny", "text": passage("tides", 0), "rank": 1, "score": 1.0}]}
    seeds = prose_seeds(docs, s)
    by_id = {x["seed_id"]: x["text"] for x in seeds}
    assert "web:long#6" in by_id and "books:tiny#0" in by_id
    limits = LongLimits(min_chars=1000, max_chars=1500)
    rows = [qa_row("web:long#6"), qa_row("books:tiny#0"), qa_row("web:gone#0"),
            qa_row("web:long#2", answer="the flow " * 200), qa_row("web:long#3", status="duplicate_question")]
    made = list(long_rows(seeds, rows, docs, s, limits, seed=0))
    # one outcome per kept pair (the duplicate is not one)
    assert [o for o, _ in made] == ["made", "too_short", "no_document", "too_long"] and set(OUTCOMES) == {o for o, _ in made}
    row = made[0][1]
    meta = json.loads(row["meta"])
    assert meta["source_cut"] and meta["documents"] == ["long"] and len(row["text"]) <= limits.max_chars
    context = row["text"].rpartition("\n\nUser: ")[0]
    assert by_id["web:long#6"] in context and len(context) > 2 * len(by_id["web:long#6"])  # its neighbours too
    assert list(long_rows(seeds, rows, docs, s, limits, seed=0)) == made
