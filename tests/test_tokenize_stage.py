"""The tokenize stage on a real local Ray: generated Parquet with bad rows, and the built-in corpus."""
import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.context import RunContext
from actors.data import tokenize
from actors.data.tokenize import tokenize_mixture
from actors.run.cluster import RayCluster
from phi4ray.data.corpus import builtin_sources, write_builtin_corpus
from phi4ray.data.mixtures import mixture_for_run, source_files
from phi4ray.data.packing import MixtureConfig, Source, load_token_shards
from phi4ray.data.row_stream import ParquetRows, RowOrder
from phi4ray.data.token_shards import EMPTY_TEXT, NOT_STRING, NULL_TEXT, RECORD, docs_file, quarantine_reason, tokenize_file
from phi4ray.model.phi4_tokenizer import ENDOFTEXT, IM_END, phi4_tokenizer
from phi4ray.presets import resolve_config, run_preset
from phi4ray.run import manifest
from phi4ray.run.stage import run_stage, stage_key

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
SPECIAL_DOC = "a document that mentions <|endoftext|> and <|im_end|> as plain text"


@pytest.fixture(scope="module")
def ray_local(ray_cluster):
    """The session's Ray cluster (conftest): one cluster per test session, shared by every module."""
    yield ray_cluster


def run_tokenize(run_dir, mix):
    """The stage's work on a mixture of the test's making (a cluster that joins the session's Ray)."""
    return tokenize_mixture(run_dir, mix, RayCluster())


def record(run_dir, out="tokens"):
    return json.loads((run_dir / out / RECORD).read_text())


def ascii_docs(n, seed):
    rng = np.random.default_rng(seed)
    return [f"doc {seed}-{i}: " + " ".join(rng.choice(WORDS, size=rng.integers(3, 60))) for i in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two sources; `alpha` spread over two files and carrying bad rows, `beta` a folder."""
    root = tmp_path_factory.mktemp("corpus")
    a1, a2, b = ascii_docs(40, 1), ascii_docs(40, 2) + [SPECIAL_DOC], ascii_docs(60, 3)
    pq.write_table(pa.table({"text": pa.array(a1[:20] + [None] + a1[20:] + ["", "  \n "], pa.string())}),
                   root / "alpha-0.parquet")
    pq.write_table(pa.table({"text": a2, "other": list(range(len(a2)))}), root / "alpha-1.parquet")
    (root / "beta").mkdir()
    pq.write_table(pa.table({"text": b}), root / "beta" / "part-0.parquet")
    return {"root": root, "alpha": a1 + a2, "beta": b}


def mixture(corpus, **kw):
    root = corpus["root"]
    sources = (Source("alpha", (str(root / "alpha-0.parquet"), str(root / "alpha-1.parquet")), 0.6),
               Source("beta", (str(root / "beta"),), 0.4))
    return MixtureConfig(sources, **{"seq_len": 48, "seed": 3, "shard_sequences": 16, **kw})


def segments(row):
    """Maximal eot-free runs of a row, with whether each is bounded by an eot on the left/right."""
    cuts = np.flatnonzero(row == ENDOFTEXT)
    bounds = [-1, *cuts.tolist(), len(row)]
    return [(row[lo + 1:hi], lo >= 0, hi < len(row)) for lo, hi in zip(bounds, bounds[1:])]


def check_rows_decode_to(texts, tokens):
    """Every complete document in a row decodes to one of `texts`; the cut ones at the row edges to
    a suffix / prefix of one. Returns the complete documents found."""
    tok = phi4_tokenizer()
    whole = set(texts)
    found = []
    for row in tokens:
        for seg, left, right in segments(row):
            text = tok.enc.decode_bytes(seg.tolist())
            if left and right:
                assert text.decode() in whole, text[:80]
                found.append(text.decode())
            elif right and len(seg):  # the tail of a document begun in an earlier row
                assert any(t.encode().endswith(text) for t in texts), text[:80]
            elif left and len(seg):   # the head of a document that goes on in a later row
                assert any(t.encode().startswith(text) for t in texts), text[:80]
    return found


@pytest.fixture(scope="module")
def two_runs(ray_local, corpus, tmp_path_factory):
    """The same mixture run into two run dirs (default total: the largest mixture at 60/40)."""
    mix = mixture(corpus)
    dirs = [tmp_path_factory.mktemp("run_a"), tmp_path_factory.mktemp("run_b")]
    return mix, dirs, [run_tokenize(d, mix) for d in dirs]


@pytest.mark.ray
def test_stage_tokenizes_quarantines_and_packs(corpus, two_runs):
    mix, (run_dir, _), (m, _) = two_runs
    c = m.counts
    alpha, beta = c["sources"]["alpha"], c["sources"]["beta"]
    assert alpha["docs_read"] == 84 and alpha["docs_kept"] == 81
    assert alpha["quarantined"] == {"empty text": 2, "null text": 1} and c["docs_quarantined"] == 3
    assert beta["docs_read"] == beta["docs_kept"] == 60 and beta["quarantined"] == {}
    assert c["docs_dropped"] == 0 and alpha["dropped"] == beta["dropped"] == {}  # no min_tokens
    tok = phi4_tokenizer()
    for name, src in (("alpha", alpha), ("beta", beta)):
        assert src["tokens_available"] == sum(len(tok.encode_ordinary(t)) + 1 for t in corpus[name])
        assert src["tokens_sampled"] == src["tokens_packed"] + src["tokens_dropped"]
    # alpha binds: taken whole; beta fills its 40% from part of its documents
    assert alpha["epochs_planned"] == 1.0 and alpha["tokens_sampled"] == alpha["tokens_available"]
    assert 0 < beta["epochs_planned"] < 1 and beta["docs_sampled"] < 60
    assert c["shares_planned"] == pytest.approx({"alpha": 0.6, "beta": 0.4}, abs=1e-6)
    assert c["shares_achieved"] == pytest.approx({"alpha": 0.6, "beta": 0.4}, abs=0.03)

    shards = list(load_token_shards(run_dir))
    tokens = np.concatenate([t for t, _ in shards])
    doc_ids = np.concatenate([d for _, d in shards])
    # a shard per shard_sequences rows of each pack group, every group dropping under one row
    assert len(shards) == c["shards"] > 1 and c["pack_groups"] >= 2
    assert all(len(t) <= 16 for t, _ in shards)
    assert c["tokens_dropped"] <= c["pack_groups"] * mix.seq_len
    assert tokens.shape == (c["sequences"], 49) and tokens.size == c["tokens_packed"]
    assert (np.diff(doc_ids, axis=1) == (tokens[:, 1:] == ENDOFTEXT)).all() and (doc_ids[:, 0] == 0).all()
    table = pa.concat_tables([pq.read_table(f) for f in sorted((run_dir / "tokens").glob("*.parquet"))])
    sources = table.column("source").to_pylist()
    assert sources.count("alpha") == alpha["sequences"] and sources.count("beta") == beta["sequences"]
    assert all(len(set(pq.read_table(f).column("source").to_pylist())) == 1
               for f in (run_dir / "tokens").glob("*.parquet"))  # a shard holds one source
    # the training reader's shuffle window mixes them: a batch holds rows of both sources
    rows = ParquetRows(run_dir / "tokens", ["source"])
    first = rows.take(RowOrder(rows.sizes, batch_size=8, seed=0).next_rows()).column("source").to_pylist()
    assert set(first) == {"alpha", "beta"}, first

    found = check_rows_decode_to(corpus["alpha"] + corpus["beta"], tokens)
    assert len(found) > 20 and len(found) == len(set(found))  # each document once, never twice
    # special-token text stayed text: no control token in the rows but the eot separators
    assert not (tokens == IM_END).any()
    assert int((tokens == ENDOFTEXT).sum()) <= alpha["docs_sampled"] + beta["docs_sampled"]


@pytest.mark.ray
def test_same_seed_same_shards_and_rerun_is_a_no_op(two_runs):
    mix, (a, b), (first, second) = two_runs
    files = sorted(p.name for p in (a / "tokens").glob("*.parquet"))  # beside them: the record (paths, times)
    assert files == sorted(p.name for p in (b / "tokens").glob("*.parquet"))
    for name in files:
        assert (a / "tokens" / name).read_bytes() == (b / "tokens" / name).read_bytes()
    assert second.counts == first.counts
    before = {f: f.stat().st_mtime_ns for f in (a / "tokens").iterdir()}
    finished = record(a)["finished_at"]
    again = run_tokenize(a, mix)
    assert again.counts == first.counts and record(a)["finished_at"] == finished
    assert {f: f.stat().st_mtime_ns for f in (a / "tokens").iterdir()} == before


@pytest.mark.ray
def test_builtin_corpus_through_the_stage(ray_local, tmp_path):
    mix = mixture_for_run(tmp_path, seq_len=128, seed=1, builtin_max_docs=6)
    assert [(s.name, s.paths, s.weight) for s in mix.sources] == [
        ("code", ("builtin/6/code",), 0.20), ("web", ("builtin/6/web",), 0.15)]
    cfg = run_preset("tiny")
    cfg = dataclasses.replace(cfg, seed=1, data=dataclasses.replace(cfg.data, seq_len=128, builtin_max_docs=6,
                                                                     total_tokens=0, shard_sequences=256))
    with RunContext.local(tmp_path, cfg) as ctx:
        m, ran = run_stage(tokenize.STAGE, ctx)
        assert ran and run_stage(tokenize.STAGE, ctx)[1] is False  # complete: a no-op
    assert set(m["counts"]["sources"]) == {"code", "web"} and m["counts"]["sequences"] > 0
    assert m["inputs"]["files"]["code"] == [str((tmp_path / "builtin/6/code/part-00000.parquet").resolve())]
    assert m["counts"] == record(tmp_path)["counts"] == run_tokenize(tmp_path, mix).counts  # the same mixture
    texts = [t for name in ("code", "web")
             for t in pq.read_table(tmp_path / "builtin" / "6" / name / "part-00000.parquet").column("text").to_pylist()]
    tokens = np.concatenate([t for t, _ in load_token_shards(tmp_path)])
    assert (tokens == ENDOFTEXT).any()
    check_rows_decode_to(texts, tokens)
    assert json.loads(manifest.manifest_path(tmp_path, "tokenize").read_text())["complete"]


# --- no Ray needed -----------------------------------------------------------------------------
def test_builtin_corpus_reads_this_machine(tmp_path):
    sources = builtin_sources(3)
    assert set(sources) <= {"code", "web"} and "code" in sources
    for name, docs in sources.items():
        assert 1 <= len(docs) <= 3
        assert all(d["source"] == name and d["text"].strip() and d["id"].startswith(name + "/") for d in docs)
    assert len({d["id"] for docs in sources.values() for d in docs}) == sum(map(len, sources.values()))
    written = write_builtin_corpus(tmp_path, 3)
    table = pq.read_table(written["code"] / "part-00000.parquet")
    assert table.column_names == ["text", "id", "source", "path"] and table.num_rows == len(sources["code"])
    mtime = (written["code"] / "part-00000.parquet").stat().st_mtime_ns
    assert write_builtin_corpus(tmp_path, 3) == written  # same size: reused, not rewritten
    assert (written["code"] / "part-00000.parquet").stat().st_mtime_ns == mtime


def test_run_sources_prefer_curated_and_synthetic(tmp_path):
    for folder in ("curated/web", "synthetic/synthetic", "curated/code", "synthetic/code"):
        (tmp_path / folder).mkdir(parents=True)
        pq.write_table(pa.table({"text": ["x"]}), tmp_path / folder / "part-0.parquet")
    mix = mixture_for_run(tmp_path, seq_len=64)
    assert [(s.name, s.paths, s.weight) for s in mix.sources] == [
        ("synthetic", ("synthetic/synthetic",), 0.40), ("web", ("curated/web",), 0.15),
        ("code", ("curated/code", "synthetic/code"), 0.20)]
    assert not (tmp_path / "builtin").exists()


def test_weights_and_epochs_change_the_stage_key(tmp_path):
    keys = {stage_key(tokenize.STAGE, resolve_config("tiny", None, o)[1], tmp_path)
            for o in ([], ["data.weights=synthetic=0.4"], ["data.weights=synthetic=0.5"], ["data.epochs=code=2"])}
    assert len(keys) == 3  # naming the default weight changes nothing


def test_bad_inputs_fail_before_work_naming_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="source 'web': path .*nope does not exist"):
        run_tokenize(tmp_path, MixtureConfig((Source("web", ("nope",), 1.0),), seq_len=16))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="source 'web': no .parquet files under"):
        source_files(tmp_path, Source("web", ("empty",), 1.0))
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="source 'web': .*x.parquet has no 'text' column"):
        run_tokenize(tmp_path, MixtureConfig((Source("web", ("x.parquet",), 1.0),), seq_len=16))
    assert not (tmp_path / "tokens").exists()


def test_tokenize_file_quarantines_streams_and_keeps_special_text_as_text(tmp_path):
    assert [quarantine_reason(t) for t in (None, 7, b"x", "", " \n\t", "ok")] == [
        NULL_TEXT, NOT_STRING, NOT_STRING, EMPTY_TEXT, EMPTY_TEXT, ""]
    texts = [SPECIAL_DOC, None, "", "hello"] * 700  # more than one record batch (READ_ROWS)
    pq.write_table(pa.table({"text": texts}), tmp_path / "in.parquet")
    tok = phi4_tokenizer()
    summary = tokenize_file(str(tmp_path / "in.parquet"), tmp_path / "cache", tok)
    assert summary == {"read": 2800, "quarantined": {EMPTY_TEXT: 700, NULL_TEXT: 700}}
    docs = pq.read_table(docs_file(tmp_path / "cache", str(tmp_path / "in.parquet")))
    assert docs.schema.field("tokens").type == pa.list_(pa.int32()) and docs.num_rows == 1400
    tokens = docs.column("tokens").to_pylist()
    assert tokens[:2] == [tok.encode_ordinary(SPECIAL_DOC), tok.encode_ordinary("hello")]
    assert docs.column("n").to_pylist()[:2] == [len(tokens[0]), len(tokens[1])]
    assert tok.decode(tokens[0]) == SPECIAL_DOC and ENDOFTEXT not in tokens[0] and IM_END not in tokens[0]
    # a second call reuses the file; a changed input is another file
    before = docs_file(tmp_path / "cache", str(tmp_path / "in.parquet")).stat().st_mtime_ns
    assert tokenize_file(str(tmp_path / "in.parquet"), tmp_path / "cache", tok) == summary
    assert docs_file(tmp_path / "cache", str(tmp_path / "in.parquet")).stat().st_mtime_ns == before
    pq.write_table(pa.table({"text": ["changed"]}), tmp_path / "in.parquet")
    assert tokenize_file(str(tmp_path / "in.parquet"), tmp_path / "cache", tok)["read"] == 1
