"""The midtraining mixture (long + recall) through the tokenize stage on a real local Ray."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.data.tokenize import tokenize_mixture
from actors.run.cluster import RayCluster
from phi4ray.data.mixtures import midtrain_mixture_for_run, mixture_for_run, source_files
from phi4ray.data.packing import load_token_shards
from phi4ray.data.token_shards import RECORD, TOO_SHORT, docs_file, source_stats, tokenize_file
from phi4ray.model.phi4_tokenizer import ENDOFTEXT, phi4_tokenizer
from phi4ray.run.errors import ConfigError

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
L = 16  # pretraining seq_len: long documents have >= 2L tokens, the up-weighted ones >= 4L


def run_tokenize(run_dir, mix, out_name="tokens"):
    return tokenize_mixture(run_dir, mix, RayCluster(), out_name=out_name)


def record(run_dir, out):
    return json.loads((run_dir / out / RECORD).read_text())


@pytest.fixture(scope="module")
def ray_local(ray_cluster):
    """The session's Ray cluster (conftest): one cluster per test session, shared by every module."""
    yield ray_cluster


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run dir with curated `web` (plus a null and a blank row) and `code`: documents of 3-120 words."""
    root = tmp_path_factory.mktemp("midtrain_run")
    texts = {}
    for seed, name in enumerate(("web", "code")):
        rng = np.random.default_rng(seed)
        texts[name] = [f"{name} {i}: " + " ".join(rng.choice(WORDS, size=rng.integers(3, 120))) for i in range(120)]
        (root / "curated" / name).mkdir(parents=True)
        rows = texts[name] + ([None, " "] if name == "web" else [])
        pq.write_table(pa.table({"text": pa.array(rows, pa.string())}), root / "curated" / name / "part-0.parquet")
    tok = phi4_tokenizer()
    lengths = [len(tok.encode_ordinary(t)) for name in ("web", "code") for t in texts[name]]
    return root, lengths


@pytest.fixture(scope="module")
def midtrained(ray_local, run):
    """The midtraining mixture tokenized into RUN/tokens_midtrain; also the run dir's top-level
    entries that this tokenize created (whatever other tests of the module wrote before)."""
    root, _ = run
    mix = midtrain_mixture_for_run(root, seq_len=4 * L, pretrain_seq_len=L, seed=2, shard_sequences=32)
    before = {p.name for p in root.iterdir()}
    m = run_tokenize(root, mix, out_name="tokens_midtrain")
    return mix, m, {p.name for p in root.iterdir()} - before


def test_midtrain_mixture_is_long_plus_recall(run):
    root, _ = run
    mix = midtrain_mixture_for_run(root, seq_len=4 * L, pretrain_seq_len=L)
    assert [(s.name, s.paths, s.weight, s.min_tokens, s.upweight_min_tokens, s.upweight) for s in mix.sources] == [
        ("long", ("curated/web", "curated/code"), 0.3, 2 * L, 4 * L, 2.0),
        ("recall", ("curated/web", "curated/code"), 0.7, 0, 0, 1.0)]
    assert mix.seq_len == 4 * L and mix.weights() == pytest.approx({"long": 0.3, "recall": 0.7})


@pytest.mark.ray
def test_midtrain_rows_shares_and_counts(run, midtrained):
    root, lengths = run
    mix, m, created = midtrained
    assert record(root, "tokens_midtrain")["counts"] == m.counts
    assert "tokens" not in created and "tokens_midtrain" in created  # pretraining's shards are not touched
    c = m.counts
    long, recall = c["sources"]["long"], c["sources"]["recall"]
    n_short, n_up = sum(n < 2 * L for n in lengths), sum(n >= 4 * L for n in lengths)
    assert 0 < n_short < len(lengths) and 0 < n_up
    # every row read is kept, dropped for its length or quarantined
    for src in (long, recall):
        assert src["docs_read"] == 242 == src["docs_kept"] + src["docs_dropped"] + src["docs_quarantined"]
        assert src["quarantined"] == {"empty text": 1, "null text": 1}
    assert long["dropped"] == {TOO_SHORT: n_short} and long["docs_kept"] == len(lengths) - n_short
    assert recall["dropped"] == {} and recall["docs_kept"] == len(lengths) and c["docs_dropped"] == n_short
    assert long["docs_upweighted"] == n_up and recall["docs_upweighted"] == 0
    assert c["shares_achieved"]["long"] == pytest.approx(0.3, abs=0.02)

    tokens = np.concatenate([t for t, _ in load_token_shards(root, "tokens_midtrain")])
    assert tokens.shape == (c["sequences"], 4 * L + 1) and c["row_width"] == 4 * L + 1
    sources = pa.concat_tables([pq.read_table(f) for f in sorted((root / "tokens_midtrain").glob("*.parquet"))]
                               ).column("source").to_pylist()
    assert sources.count("long") == long["sequences"] > 0 and sources.count("recall") == recall["sequences"]
    # a whole document inside a long row (eot on both sides) has >= 2L tokens; recall rows hold short ones too
    whole = {"long": [], "recall": []}
    for row, source in zip(tokens, sources):
        cuts = np.flatnonzero(row == ENDOFTEXT)
        whole[source] += np.diff(cuts).tolist()
    assert whole["long"] and min(whole["long"]) - 1 >= 2 * L and min(whole["recall"]) - 1 < 2 * L


@pytest.mark.ray
def test_rerun_is_a_no_op_and_pretraining_tokens_live_beside(run, midtrained):
    root, _ = run
    mix, first, _ = midtrained
    finished = record(root, "tokens_midtrain")["finished_at"]
    again = run_tokenize(root, mix, out_name="tokens_midtrain")
    assert again.counts == first.counts and record(root, "tokens_midtrain")["finished_at"] == finished
    pre = run_tokenize(root, mixture_for_run(root, seq_len=L))
    assert pre.counts["seq_len"] == L and next(load_token_shards(root))[0].shape[1] == L + 1
    assert record(root, "tokens_midtrain")["finished_at"] == finished


@pytest.mark.ray
def test_no_long_document_fails_naming_the_threshold(ray_local, run, tmp_path):
    root, lengths = run
    mix = midtrain_mixture_for_run(root, seq_len=1024, pretrain_seq_len=256)
    with pytest.raises(ValueError, match=rf"'long' keeps no document of >= min_tokens=512 tokens "
                                         rf"\(240 documents, the longest {max(lengths)} tokens\)"):
        run_tokenize(root, mix, out_name="tokens_x")
    assert not (root / "tokens_x").exists()


@pytest.mark.parametrize("kw, needle", [
    ({"seq_len": 16, "pretrain_seq_len": 16}, "seq_len=16 must be an integer > pretrain_seq_len=16"),
    ({"seq_len": 64, "pretrain_seq_len": 0}, "pretrain_seq_len=0"),
    ({"seq_len": 64, "pretrain_seq_len": 16, "long_share": 1.0}, "long_share=1.0"),
])
def test_bad_midtrain_config(tmp_path, kw, needle):
    with pytest.raises(ConfigError, match=needle):
        midtrain_mixture_for_run(tmp_path, **kw)
    assert not (tmp_path / "builtin").exists()


def test_synthetic_long_rows_join_long_only(tmp_path):
    """RUN/synthetic/long (the synthesize stage's long rows) is part of midtraining's `long` source,
    where a row under 2L tokens is dropped and counted like any short document; neither recall nor
    the pretraining mixture reads it. No Ray: the tokenize stage's per-file pass, in-process."""
    def write(rel, texts):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": pa.array(texts, pa.string())}), tmp_path / rel)

    long_row, short_row = " ".join(WORDS * 4), "alpha beta gamma"
    write("curated/web/part-0.parquet", ["web " + " ".join(WORDS)])
    write("synthetic/synthetic/qa.parquet", ["User: what? Assistant: that."])
    write("only/synthetic/long/long.parquet", [long_row])
    write("synthetic/long/long.parquet", [long_row, short_row])
    pre = mixture_for_run(tmp_path, seq_len=L)
    assert {s.name: s.paths for s in pre.sources} == {"synthetic": ("synthetic/synthetic",), "web": ("curated/web",)}
    long, recall = midtrain_mixture_for_run(tmp_path, seq_len=4 * L, pretrain_seq_len=L).sources
    assert long.paths == ("synthetic/synthetic", "curated/web", "synthetic/long")
    assert recall.paths == ("synthetic/synthetic", "curated/web")

    tok, cache = phi4_tokenizer(), tmp_path / "tokenized"
    assert [len(tok.encode_ordinary(t)) >= 2 * L for t in (long_row, short_row)] == [True, False]
    rows_file, = (f for f in source_files(tmp_path, long) if f.endswith("synthetic/long/long.parquet"))
    tokenize_file(rows_file, cache, tok)
    stats = source_stats(docs_file(cache, rows_file), long)
    assert (stats["kept"], stats["short"]) == (1, 1)

    # a run holding only long rows pretrains on the built-in corpus, not on them
    only = mixture_for_run(tmp_path / "only", seq_len=L, builtin_max_docs=2)
    assert {p.split("/")[0] for s in only.sources for p in s.paths} == {"builtin"}
