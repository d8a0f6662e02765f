"""The curate stage on a real local Ray cluster, through the stage runner: every reader, every
filter, both dedups, the quality classifier and decontamination on small real inputs with planted
faults; the funnel adds up; a rerun is a no-op; a crash mid-way resumes to the same output."""
import dataclasses
import gzip
import io
import json
import os
import shutil
import statistics
from html import escape

import numpy as np
import pyarrow.parquet as pq
import pytest
from openai import OpenAI
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

import phi4ray.data.curate.annotate as annotate_module
from actors.context import RunContext
from actors.data.curate import STAGE
from phi4ray.data.corpus import builtin_sources
from phi4ray.data.curate.annotate import annotate, annotation_prompt
from phi4ray.data.curate.builtin import MAN_ROOT, man_to_text
from phi4ray.data.curate.classifier import QualityClassifier, train_classifier
from phi4ray.data.curate.config import CurateConfig, QualityConfig
from phi4ray.data.curate.quality import sample_rank
from phi4ray.evals.generators import arith_suite
from phi4ray.presets import run_preset
from phi4ray.run.overrides import apply_overrides
from phi4ray.run.stage import run_stage, stage_key

pytestmark = pytest.mark.ray


def _prose(k: int) -> list[str]:
    return [d["text"] for d in builtin_sources(k)["web"]][:k]


def make_inputs(root) -> tuple[list[str], dict]:
    """Small raw inputs in every format, with faults planted; returns curate inputs and what was planted."""
    docs = _prose(24)
    near = docs[1].replace(" the ", " a ", 3)  # a near-duplicate: a few words changed
    planted = {"exact": docs[0], "near": (docs[1], near), "contaminated_item": arith_suite(1234, 12).items[0].prompt,
               "repetitive": "ab" * 4000}
    assert near != docs[1]
    contaminated = docs[2] + "\n\nExercise. " + planted["contaminated_item"] + "\n"
    web = root / "web"
    web.mkdir()
    with gzip.open(web / "prose.jsonl.gz", "wt") as f:
        for d in docs[:14] + [docs[0], near, contaminated]:
            f.write(json.dumps({"text": d}) + "\n")
        f.write('{"text": "a broken line\n')                # broken JSON: quarantined
        f.write(json.dumps({"body": "no text field"}) + "\n")  # missing field: quarantined
        f.write(json.dumps({"text": planted["repetitive"]}) + "\n")  # repetitive: dropped by a corruption rule
    (web / "empty.jsonl").write_bytes(b"")
    page = ("<html><head><title>T</title></head><body><nav><a href='/'>Home</a> | <a href='/x'>Next</a></nav>"
            "<div class='content'><h1>Sorting</h1><p>{p}</p><pre><code class='language-python'>def f(x):\n"
            "    return sorted(x)\n</code></pre><table><tr><th>n</th><th>cost</th></tr><tr><td>10</td><td>33</td>"
            "</tr></table></div><footer>Copyright 2026, all rights reserved.</footer></body></html>")
    with open(web / "crawl.warc.gz", "wb") as f:
        w = WARCWriter(f, gzip=True)
        for i, d in enumerate(docs[14:17]):  # texts of their own: not near-duplicates of the JSONL
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(f"http://example.test/{i}", "response",
                                                payload=io.BytesIO(page.format(p=escape(d)).encode()), http_headers=http))
    html = root / "html"
    html.mkdir()
    (html / "page.html").write_text(page.format(p=escape(docs[17])))
    (html / "deep.html").write_text("<div>" * 20000 + "deep" + "</div>" * 20000)
    (html / "binary.html").write_bytes(os.urandom(4096))
    russian = man_to_text(gzip.decompress(sorted((MAN_ROOT / "ru" / "man1").glob("*.gz"))[0].read_bytes()).decode())
    planted["russian"] = russian[:200]
    with open(root / "ru.jsonl", "w") as f:  # a real Russian man page: language ID must drop it
        f.write(json.dumps({"text": russian}) + "\n")
    code = root / "repo"
    (code / "pkg").mkdir(parents=True)
    for name in ("heapq", "bisect", "textwrap"):
        src = __import__(name).__file__
        shutil.copyfile(src, code / "pkg" / f"{name}.py")
    (code / "pkg" / "blob.py").write_bytes(b"\x00\x01\x02" * 1000)  # a binary in a code repo
    inputs = (f"web={web}", f"web={html}", f"web={root / 'ru.jsonl'}", f"code=code:{code}")
    return list(inputs), planted


def run_curate(run_dir, cfg) -> dict:
    with RunContext.local(run_dir, cfg) as ctx:  # joins the session's Ray, leaves it running
        return run_stage(STAGE, ctx, echo=lambda line: None)[0]


@pytest.fixture(scope="module")
def curated(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("curate_inputs")
    inputs, planted = make_inputs(root)
    run_dir = tmp_path_factory.mktemp("curate_run")
    cfg = dataclasses.replace(run_preset("tiny"), curate=CurateConfig(
        inputs=tuple(inputs), languages=("en",), quality=QualityConfig(annotate_docs=16)))
    return run_dir, cfg, planted, run_curate(run_dir, cfg)


def _kept(run_dir) -> dict[str, dict]:
    rows = {}
    for f in sorted((run_dir / "curated").rglob("*.parquet")):
        for r in pq.read_table(f).to_pylist():  # plain pyarrow: no Ray needed to read the output
            rows[r["doc_id"]] = r
    return rows


def _dropped_for_quality(run_dir) -> dict[str, dict]:
    return {r["doc_id"]: r for f in sorted((run_dir / "curate" / "dropped").rglob("*.parquet"))
            for r in pq.read_table(f).to_pylist() if r["reason"] == "quality"}


def test_funnel_adds_up_and_every_filter_did_its_job(curated):
    run_dir, cfg, planted, done = curated
    stats = json.loads((run_dir / "curate" / "stats.json").read_text())
    assert stats["read"] == stats["kept"] + stats["dropped"] + stats["quarantined"]
    kept, low = _kept(run_dir), _dropped_for_quality(run_dir)
    assert len(kept) == stats["kept"] and set(stats["kept_by_source"]) == {"web", "code"}
    by = stats["dropped_by_filter"]
    assert len(low) == by.get("quality", 0) == stats["quality"]["dropped"]
    # what every filter before the quality threshold let through: the threshold's drops are
    # checked below, against the classifier's scores
    survivors = {**kept, **low}
    texts = [r["text"] for r in survivors.values()]
    assert by["dedup"] >= 2  # the exact copy and the near-duplicate: one of each pair is kept
    assert sum(t == planted["exact"] for t in texts) == 1 and sum(t in planted["near"] for t in texts) == 1
    assert by["contaminated"] == 1 and not any(planted["contaminated_item"] in t for t in texts)
    assert by["language"] >= 1 and not any(planted["russian"] in t for t in texts)
    assert by["corruption"] >= 1 and planted["repetitive"] not in texts
    reasons = stats["reasons"]
    assert any(k.startswith("quarantined:") for k in reasons)
    # HTML from the WARC and the folder: main text, code and table kept, navigation and footer gone
    html_docs = [r for r in survivors.values() if r["format"] in ("warc", "html")]
    # (which of the pages and files survive the corruption rules depends on this machine's texts)
    # the page's text starts at its heading (the navigation before it is gone) and ends with the
    # table (the footer after it is gone)
    table = "```python\ndef f(x):\n    return sorted(x)\n```\n\n| n | cost |\n| --- | --- |\n| 10 | 33 |"
    assert html_docs and all(r["text"].startswith("# Sorting\n\n") and r["text"].endswith("\n\n" + table)
                             for r in html_docs)
    assert all(r["html_code_blocks"] == 1 for r in html_docs)
    # code files keep their language; the binary in the repo never reached the output
    code = [r for r in kept.values() if r["source"] == "code"]
    assert code and {r["record"] for r in code} <= {"pkg/bisect.py", "pkg/heapq.py", "pkg/textwrap.py"}
    assert all(r["language"] == "python" for r in code)
    # every dropped or quarantined row is kept aside with its reason
    aside = [r for d in ("dropped", "quarantined") for f in (run_dir / "curate" / d).rglob("*.parquet")
             for r in pq.read_table(f, columns=["doc_id", "uri", "reason"]).to_pylist()]
    assert len(aside) == stats["dropped"] + stats["quarantined"] and all(r["reason"] for r in aside)
    why = {r["uri"].rsplit("/", 1)[-1]: r["reason"] for r in aside if r["uri"].endswith((".html", ".py"))}
    assert why["blob.py"].startswith("binary") and why["binary.html"].startswith("binary")
    assert why["deep.html"] == "html:too deep"
    q = stats["quality"]
    # the sample is 16 docs or every surviving prose doc, whichever is fewer
    prose = sum(r["content_type"] != "code" for r in kept.values()) + by.get("quality", 0)
    assert q["annotated"] == min(16, prose) > 0
    # the heuristic labels split at their median, so both classes exist and the classifier trains
    notes = [json.loads(x) for x in (run_dir / "curate" / "quality" / "annotations.jsonl").read_text().splitlines()]
    edu = [n["annotation"]["educational_value"] for n in notes]
    assert "skipped" not in q and q["label_threshold"] == statistics.median(edu)
    assert [n["label"] for n in notes] == [int(v >= q["label_threshold"]) for v in edu]
    assert 0 < q["positives"] == sum(n["label"] for n in notes) < q["parsed"] == len(notes)
    # the sample is the first k by sample_rank of the prose the per-document filters kept and dedup
    # did not drop (exact copies and near duplicates each by its own reason)
    dedup_reasons = {r["doc_id"]: r["reason"] for f in (run_dir / "curate" / "dropped").rglob("*.parquet")
                     for r in pq.read_table(f, columns=["doc_id", "reason"]).to_pylist() if r["reason"].startswith("dedup")}
    assert sorted(set(dedup_reasons.values())) == ["dedup:exact", "dedup:minhash"]
    eligible = [r["doc_id"] for f in (run_dir / "curate" / "shards").glob("*.parquet")
                for r in pq.read_table(f, columns=["doc_id", "status", "content_type"]).to_pylist()
                if r["status"] == "kept" and r["content_type"] != "code" and r["doc_id"] not in dedup_reasons]
    first_k = sorted(eligible, key=lambda d: (sample_rank(d), d))[:16]
    assert [n["doc_id"] for n in notes] == first_k
    # ... on exactly those documents and labels: the same training on them gives the saved weights
    # and the held-out accuracy reported
    clf = QualityClassifier.load(run_dir / "curate" / "quality" / "classifier.npz")
    texts_by_id = {r["doc_id"]: r["text"] for f in (run_dir / "curate" / "shards").glob("*.parquet")
                   for r in pq.read_table(f, columns=["doc_id", "text"]).to_pylist()}
    again, m = train_classifier([texts_by_id[n["doc_id"]] for n in notes], [n["label"] for n in notes],
                                cfg.curate.quality.classifier)
    assert all(np.array_equal(getattr(again, k), getattr(clf, k)) for k in ("emb", "w", "b"))
    assert q["heldout_size"] == m["heldout_size"] > 0 and q["heldout_accuracy"] == m["heldout_accuracy"]
    # every kept document, and every one dropped for quality, carries the score the saved classifier
    # gives its text
    docs = sorted([*kept.values(), *low.values()], key=lambda r: r["doc_id"])
    want = clf.score([r["text"] for r in docs])
    assert [r["quality_score"] for r in docs] == pytest.approx(want.tolist(), abs=1e-6)
    assert len(set(np.round(want, 6).tolist())) > 1  # a real score, not a constant
    # the default threshold, unless a classifier trained on a dozen documents cannot tell its labels
    # apart on held-out ones (which depends on this machine's texts; tests/test_curate_outputs.py
    # drops known scores): the prose below it dropped, and only that; code never dropped for quality
    assert QualityConfig().min_score == 0.5 and (q["min_score"], "not_dropping" in q) in ((0.5, False), (0.0, True))
    assert q["judge"] == "passage heuristics, no LLM judge"
    assert {k: done["counts"]["quality"][k] for k in ("annotator", "judge", "heldout_accuracy", "dropped")} == {
        k: q[k] for k in ("annotator", "judge", "heldout_accuracy", "dropped")}  # the manifest names them too
    assert all(r["content_type"] != "code" and r["quality_score"] < q["min_score"] for r in low.values())
    assert all(r["quality_score"] >= q["min_score"] for r in kept.values() if r["content_type"] != "code")


def test_rerun_is_a_no_op_and_a_crash_resumes_to_the_same_output(curated):
    run_dir, cfg, planted, done = curated
    assert run_curate(run_dir, cfg)["finished_at"] == done["finished_at"]
    before = {d: r["text"] for d, r in _kept(run_dir).items()}
    files = {f.relative_to(run_dir): pq.read_table(f) for f in sorted((run_dir / "curated").rglob("*.parquet"))}
    shards = sorted((run_dir / "curate" / "shards").glob("*.parquet"))
    untouched = {p: p.stat().st_mtime_ns for p in shards[2:]}
    # a crash after two shards' worth of work was lost: their files, the manifest, a half-written file
    for p in shards[:2]:
        p.unlink()
    (run_dir / "manifests" / "curate.json").unlink()
    (run_dir / "curate" / "shards" / "junk.parquet.tmp").write_bytes(b"PAR1 half")
    again = run_curate(run_dir, cfg)
    assert {d: r["text"] for d, r in _kept(run_dir).items()} == before
    # one output file per input file, rebuilt row for row: the same input gives the same files
    again_files = {f.relative_to(run_dir): pq.read_table(f) for f in sorted((run_dir / "curated").rglob("*.parquet"))}
    assert again_files.keys() == files.keys() and all(again_files[f].equals(t) for f, t in files.items())
    assert all(p.stat().st_mtime_ns == t for p, t in untouched.items())  # finished shards were skipped
    assert again["counts"] == done["counts"]


@pytest.mark.vllm
def test_llm_judge_annotations_go_through_the_real_fleet(sampler_app, monkeypatch):
    """annotator=endpoint against our vLLM sampler app over HTTP: every sampled document gets a
    reply from the engine (the tiny random model's replies do not parse: they count as unannotated,
    never as an error that stops the stage)."""
    replies = []
    parse = annotate_module.parse_annotation
    monkeypatch.setattr(annotate_module, "parse_annotation", lambda reply, *a: replies.append(reply) or parse(reply, *a))
    cfg = dataclasses.replace(run_preset("tiny"), curate=CurateConfig(quality=QualityConfig(
        annotator="endpoint", url=sampler_app["url"] + "/v1", name=sampler_app["model_id"],
        api_key_env="PHI4RAY_TEST_API_KEY", judge_max_tokens=96)))
    # the session app's context is 512 tokens: the ~250-token rubric, a short extract, the reply
    texts = [t[:200] for t in _prose(6)]
    notes = annotate(texts, cfg.curate.quality)
    # the replies are the engine's own greedy answers to the rubric, asked here directly, one by one
    client = OpenAI(base_url=sampler_app["url"] + "/v1", api_key=sampler_app["key"], timeout=120)
    direct = [client.chat.completions.create(model=sampler_app["model_id"], max_tokens=96, temperature=0.0, messages=[
        {"role": "user", "content": annotation_prompt(t)}]).choices[0].message.content for t in texts]
    assert len(replies) == 6 and sorted(replies) == sorted(direct) and all(direct)
    # each document's annotation is what its reply parses to (None for the random model's text)
    assert notes == [parse(r) for r in direct]


def test_eval_size_and_suites_do_not_rerun_curate(tmp_path):
    """Curate depends on the decontamination set, which is every built-in suite at its largest size:
    the eval size and the suites evaluated change eval's key, not curate's; the eval seed does."""
    cfg = run_preset("tiny")
    key = stage_key(STAGE, cfg, tmp_path)
    assert stage_key(STAGE, apply_overrides(cfg, ["eval.size=20", "eval.suites=arith"]), tmp_path) == key
    assert stage_key(STAGE, apply_overrides(cfg, ["eval.seed=7"]), tmp_path) != key
    assert stage_key(STAGE, apply_overrides(cfg, ["curate.reader.text_field=content"]), tmp_path) != key
