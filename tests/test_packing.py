"""Packing, mixture planning (with the run config's per-source weights and epochs) and document
sampling: plain numpy, no Ray."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from phi4ray.data.mixtures import mixture_for_run, pretrain_mixture
from phi4ray.data.packing import (
    PHI4_MIXTURE,
    MixtureConfig,
    PackStats,
    Source,
    load_token_shards,
    mixture_plan,
    pack,
    plan_shares,
)
from phi4ray.data.token_shards import DocCopies
from phi4ray.model.decoder import document_causal_mask, positions_from_doc_ids
from phi4ray.presets import DataConfig, resolve_config
from phi4ray.run.errors import ConfigError, UserError
from phi4ray.run.overrides import flatten

EOT = 100257


def random_docs(n, seed=0, max_len=40):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 1000, size=rng.integers(0, max_len)).tolist() for _ in range(n)]


def mix_of(**weights_epochs):
    return MixtureConfig(tuple(Source(n, (f"d/{n}",), w, e) for n, (w, e) in weights_epochs.items()), seq_len=16)


# --- packing -----------------------------------------------------------------------------------
def test_small_pack_by_hand():
    stats = PackStats()
    rows = list(pack([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]], seq_len=3, eot_id=EOT, stats=stats))
    # stream 1 2 3 E 4 5 E 6 7 8 9 10 E -> rows of 4, remainder of 1 dropped
    assert [r["tokens"].tolist() for r in rows] == [[1, 2, 3, EOT], [4, 5, EOT, 6], [7, 8, 9, 10]]
    assert [r["doc_ids"].tolist() for r in rows] == [[0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert (stats.docs, stats.tokens_in, stats.tokens_packed, stats.tokens_dropped, stats.rows) == (3, 13, 12, 1, 3)
    assert all(r["tokens"].dtype == np.int32 and r["doc_ids"].dtype == np.int32 for r in rows)


@pytest.mark.parametrize("seq_len, max_len", [(8, 40), (31, 5), (64, 200)])
def test_every_token_once_in_order_and_boundaries_exact(seq_len, max_len):
    docs = random_docs(60, seed=seq_len, max_len=max_len)
    stats = PackStats()
    rows = list(pack(docs, seq_len, EOT, stats))
    stream = np.concatenate([np.array(d + [EOT]) for d in docs])
    packed = np.concatenate([r["tokens"] for r in rows])
    assert len(stream) == stats.tokens_in == stats.tokens_packed + stats.tokens_dropped
    assert stats.tokens_dropped < seq_len + 1 and stats.rows == len(rows) == len(stream) // (seq_len + 1)
    assert (packed == stream[:len(packed)]).all()
    for r in rows:
        tok, ids = r["tokens"], r["doc_ids"]
        assert len(tok) == len(ids) == seq_len + 1 and ids[0] == 0
        # the id changes exactly where an eot is, by one
        assert (np.diff(ids) == (tok[1:] == EOT)).all()


def test_doc_ids_drive_the_models_document_mask():
    rows = list(pack([[1, 2], [3, 4, 5], [6]], seq_len=7, eot_id=EOT))
    tok = torch.tensor(np.stack([r["tokens"] for r in rows]))[:, :-1]
    ids = torch.tensor(np.stack([r["doc_ids"] for r in rows]))[:, :-1]
    assert tok.tolist() == [[1, 2, EOT, 3, 4, 5, EOT]]
    # the eot opens the next document: positions restart on it
    assert positions_from_doc_ids(ids).tolist() == [[0, 1, 0, 1, 2, 3, 0]]
    mask = document_causal_mask(ids)[0, 0]
    assert mask[5].tolist() == [False, False, True, True, True, True, False]  # token 5 sees only its doc
    assert mask[2, :2].tolist() == [False, False]  # doc 2's eot-start does not see doc 1


def test_long_document_continues_in_next_row():
    rows = list(pack([list(range(1, 21))], seq_len=7, eot_id=EOT))
    assert [r["tokens"].tolist() for r in rows] == [list(range(1, 9)), list(range(9, 17))]
    assert all((r["doc_ids"] == 0).all() for r in rows)


def test_pack_rejects_bad_seq_len():
    with pytest.raises(ValueError, match="seq_len"):
        list(pack([[1]], 0, EOT))


# --- mixture -----------------------------------------------------------------------------------
def test_phi4_mixture_is_the_reports():
    assert PHI4_MIXTURE == {"synthetic": 0.40, "web": 0.15, "web_rewrites": 0.15, "code": 0.20, "acquired": 0.10}
    assert sum(PHI4_MIXTURE.values()) == pytest.approx(1.0)


def test_default_total_meets_weights_exactly():
    mix = mix_of(a=(0.5, 1.0), b=(0.3, 1.0), c=(0.2, 1.0))
    counts = {"a": 1000, "b": 5000, "c": 300}
    plan = mixture_plan(counts, mix)
    assert plan_shares(plan, counts) == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2})
    assert plan["c"] == pytest.approx(1.0)  # the binding source is taken whole
    assert all(plan[n] <= 1.0 + 1e-12 for n in plan)


def test_caps_bind_and_the_rest_renormalise():
    mix = mix_of(a=(0.5, 2.0), b=(0.3, 1.0), c=(0.2, 10.0))
    counts = {"a": 1000, "b": 1000, "c": 1000}
    plan = mixture_plan(counts, mix, total_tokens=6000)
    # a wants 3000 > cap 2000, b wants 1800 > cap 1000; c takes the remaining 3000
    assert plan == pytest.approx({"a": 2.0, "b": 1.0, "c": 3.0})
    shares = plan_shares(plan, counts)
    assert sum(shares.values()) == pytest.approx(1.0) and shares["c"] == pytest.approx(0.5)
    # asking for more than every cap together takes every cap
    assert mixture_plan(counts, mix, total_tokens=10**9) == pytest.approx({"a": 2.0, "b": 1.0, "c": 10.0})
    # within every cap the shares are the weights
    assert plan_shares(mixture_plan(counts, mix, 2000), counts) == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2})


def test_empty_source_gets_nothing_and_others_renormalise():
    mix = mix_of(a=(0.6, 1.0), b=(0.2, 1.0), c=(0.2, 1.0))
    counts = {"a": 600, "b": 0, "c": 1000}
    plan = mixture_plan(counts, mix)
    assert plan["b"] == 0.0
    assert plan_shares(plan, counts) == pytest.approx({"a": 0.75, "b": 0.0, "c": 0.25})
    with pytest.raises(ValueError, match=r"missing for sources \['c'\]"):
        mixture_plan({"a": 1, "b": 1}, mix)


# --- sampling ----------------------------------------------------------------------------------
def copies(lengths, epochs, phase, weights=None):
    """DocCopies over documents fed in record batches of 37, as the packing pass feeds them."""
    w = np.ones(len(lengths)) if weights is None else np.asarray(weights, dtype=float)
    c = DocCopies(epochs, phase)
    return np.concatenate([c.take(w[i:i + 37]) for i in range(0, len(w), 37)])


def test_sampling_takes_whole_passes_and_an_exact_fraction():
    lengths = np.random.default_rng(1).integers(1, 50, size=200)
    a = copies(lengths, 2.5, 0.3)
    assert a.tolist() == copies(lengths, 2.5, 0.3).tolist() != copies(lengths, 2.5, 0.8).tolist()
    assert a.min() == 2 and a.max() == 3 and a.sum() == 500  # two full passes, then half of a third
    assert copies(lengths, 1.0, 0.9).tolist() == [1] * 200
    # whatever the phase, the total is floor or ceil of the expected copies
    assert all(abs(copies(lengths, 0.37, p / 10).sum() - 74) <= 1 for p in range(10))
    # the fractional pass spreads over the documents, not a prefix of them
    third = copies(lengths, 0.25, 0.5)
    assert third[:100].sum() == third[100:].sum() == 25


def test_upweighting_raises_the_share_of_long_documents():
    rng = np.random.default_rng(2)
    lengths = np.concatenate([rng.integers(5, 20, size=300), rng.integers(100, 200, size=30)])
    rng.shuffle(lengths)
    is_long = lengths >= 100
    source = Source("long", ("x",), 1.0, upweight_min_tokens=100, upweight=2.0)
    weights = source.doc_weights(lengths)
    assert weights.tolist() == np.where(is_long, 2.0, 1.0).tolist()
    assert Source("a", ("x",), 1.0).doc_weights(lengths) is None

    def long_share(c):
        return (c * lengths)[is_long].sum() / (c * lengths).sum()

    # a whole pass: every long document twice, every short one once
    one = copies(lengths, 1.0, 0.5, weights)
    assert one.tolist() == np.where(is_long, 2, 1).tolist()
    expected = 2 * lengths[is_long].sum() / (2 * lengths[is_long].sum() + lengths[~is_long].sum())
    assert long_share(one) == pytest.approx(expected)
    # a part of a pass (how `mixture_plan` usually takes the long source): share up from the plain one
    plain = np.mean([long_share(copies(lengths, 0.4, p / 20)) for p in range(20)])
    up = np.mean([long_share(copies(lengths, 0.4, p / 20, weights)) for p in range(20)])
    assert plain == pytest.approx(lengths[is_long].sum() / lengths.sum(), abs=0.05)
    assert up == pytest.approx(expected, abs=0.05) and expected > plain + 0.1


# --- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, needle", [
    (lambda: Source("web", ("x",), 0.0), "weight=0.0"),
    (lambda: Source("web", ("x",), -1), "weight=-1"),
    (lambda: Source("web", ("x",), float("nan")), "weight=nan"),
    (lambda: Source("web", ("x",), 1.0, epochs=0), "epochs=0"),
    (lambda: Source("", ("x",), 1.0), "source.name"),
    (lambda: Source("web", ("x",), 1.0, min_tokens=-1), "min_tokens=-1"),
    (lambda: Source("web", ("x",), 1.0, upweight_min_tokens=1.5), "upweight_min_tokens=1.5"),
    (lambda: Source("web", ("x",), 1.0, upweight=0.5), "upweight=0.5 must be >= 1"),
    (lambda: Source("web", ("x",), 1.0, upweight=float("inf")), "upweight=inf"),
    (lambda: Source("web", (), 1.0), "paths"),
    (lambda: MixtureConfig((Source("a", "p", 1.0),), seq_len=4), "mixture.seq_len=4"),
    (lambda: MixtureConfig((Source("a", "p", 1.0),), seq_len=16, shard_sequences=0), "mixture.shard_sequences=0"),
    (lambda: MixtureConfig((Source("a", "p", 1.0),), seq_len=16, total_tokens=-5), "mixture.total_tokens=-5"),
    (lambda: MixtureConfig((), seq_len=16), "mixture.sources"),
    (lambda: MixtureConfig((Source("a", "p", 1.0), Source("a", "q", 1.0)), seq_len=16), "duplicate"),
])
def test_bad_config_names_the_field(make, needle):
    with pytest.raises(ConfigError) as e:
        make()
    assert needle in str(e.value)


def test_source_paths_normalise_to_a_tuple():
    assert Source("a", "one.parquet", 1.0).paths == ("one.parquet",)
    assert Source("a", ["x", "y"], 1.0).paths == ("x", "y")


# --- data.weights / data.epochs ----------------------------------------------------------------
def run_mixture(tmp_path, counts, *overrides):
    """(the tokenize stage's mixture for the tiny preset + `overrides` over a run holding curated
    data for each source of `counts`, its plan at data.total_tokens over those token counts)."""
    for name in counts:
        (tmp_path / "curated" / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": ["x"]}), tmp_path / "curated" / name / "part-0.parquet")
    cfg = resolve_config("tiny", None, list(overrides))[1]
    mix = pretrain_mixture(tmp_path, cfg)
    return mix, mixture_plan(counts, mix, cfg.data.total_tokens)


def test_weights_override_sets_the_planned_shares(tmp_path):
    counts = {"synthetic": 10_000, "web": 10_000, "code": 10_000}
    _, plan = run_mixture(tmp_path, counts, "data.total_tokens=6000")
    assert plan_shares(plan, counts) == pytest.approx({"synthetic": 0.40 / 0.75, "web": 0.15 / 0.75, "code": 0.20 / 0.75})
    # sources left out keep the report's weight; shares renormalise over the sources the run has
    mix, plan = run_mixture(tmp_path, counts, "data.total_tokens=6000", "data.weights=synthetic=0.2,web=0.6")
    assert {s.name: s.weight for s in mix.sources} == {"synthetic": 0.2, "web": 0.6, "code": 0.2}
    assert plan_shares(plan, counts) == pytest.approx({"synthetic": 0.2, "web": 0.6, "code": 0.2})


def test_epochs_override_lets_a_small_source_repeat(tmp_path):
    counts = {"synthetic": 100, "web": 10_000, "code": 10_000}
    mix, plan = run_mixture(tmp_path, counts, "data.total_tokens=2000")
    assert [s.epochs for s in mix.sources] == [1.0, 1.0, 1.0]
    assert plan["synthetic"] == 1.0  # capped at one pass: 100 tokens where its weight asks for 1067
    mix, plan = run_mixture(tmp_path, counts, "data.total_tokens=2000", "data.epochs=synthetic=12")
    assert {s.name: s.epochs for s in mix.sources} == {"synthetic": 12.0, "web": 1.0, "code": 1.0}
    assert plan["synthetic"] * counts["synthetic"] == pytest.approx(2000 * 0.40 / 0.75)  # > 100: repeated
    assert plan_shares(plan, counts)["synthetic"] == pytest.approx(0.40 / 0.75)
    # data.total_tokens=0 (the largest mix within the caps): 12 epochs of the binding source, 12x the tokens
    _, one = run_mixture(tmp_path, counts, "data.total_tokens=0")
    _, twelve = run_mixture(tmp_path, counts, "data.total_tokens=0", "data.epochs=synthetic=12")
    assert (one["synthetic"], twelve["synthetic"]) == pytest.approx((1.0, 12.0))
    assert sum(twelve[n] * c for n, c in counts.items()) == pytest.approx(12 * sum(one[n] * c for n, c in counts.items()))


def test_weights_and_epochs_are_one_table_however_written():
    data = DataConfig(weights=("synthetic=0.4",), epochs=("web=1",))
    assert data == DataConfig()  # naming a default is the default: the same tokenize stage key
    assert data.source_weights() == PHI4_MIXTURE and set(data.source_epochs().values()) == {1.0}
    cfg = resolve_config("tiny", None, ["data.weights=code=0.5", "data.epochs=synthetic=12"])[1]
    dumped = [f"{k}={v}" for k, v in flatten(cfg).items() if k.startswith("data.")]
    assert resolve_config("tiny", None, dumped)[1] == cfg  # `phi4ray config` output reads back


@pytest.mark.parametrize("field, entries, needle", [
    ("weights", ("synth=0.5",), "data.weights: unknown source 'synth' in 'synth=0.5'; the sources are ['synthetic'"),
    ("epochs", ("synthetic",), "data.epochs: 'synthetic' is not source=value"),
    ("weights", ("web=0",), "data.weights: web=0.0 must be a finite number > 0"),
    ("weights", ("web=-1",), "data.weights: web=-1.0 must be"),
    ("weights", ("web=nan",), "data.weights: web=nan must be"),
    ("weights", ("web=inf",), "data.weights: web=inf must be"),
    ("epochs", ("code=0",), "data.epochs: code=0.0 must be a finite number > 0"),
    ("epochs", ("code=-2",), "data.epochs: code=-2.0 must be"),
    ("epochs", ("code=many",), "data.epochs: 'code=many': 'many' is not a number"),
    ("epochs", ("code=2", "code=3"), "data.epochs: source 'code' is given twice"),
])
def test_bad_weights_and_epochs_name_the_problem(field, entries, needle):
    with pytest.raises(ConfigError) as e:
        DataConfig(**{field: entries})
    assert needle in str(e.value)


def test_bad_table_on_the_command_line_names_the_key():
    with pytest.raises(UserError, match=r"data.epochs=synthetic=0: data.epochs: synthetic=0.0 must be"):
        resolve_config("tiny", None, ["data.epochs=synthetic=0"])
    with pytest.raises(ConfigError, match=r"unknown source\(s\) \['synth'\]"):
        mixture_for_run("unused", seq_len=16, epochs={"synth": 2.0})


# --- shards ------------------------------------------------------------------------------------
def test_load_token_shards(tmp_path):
    (tmp_path / "tokens").mkdir()
    rows = list(pack(random_docs(30), 15, EOT))
    t = pa.array([r["tokens"].tolist() for r in rows], pa.list_(pa.int32()))
    d = pa.array([r["doc_ids"].tolist() for r in rows], pa.list_(pa.int32()))
    pq.write_table(pa.table({"tokens": t, "doc_ids": d, "source": ["s"] * len(rows)}),
                   tmp_path / "tokens" / "shard-00000.parquet")
    [(tokens, doc_ids)] = list(load_token_shards(tmp_path))
    assert tokens.shape == doc_ids.shape == (len(rows), 16) and tokens.dtype == np.int32
    assert (tokens == np.stack([r["tokens"] for r in rows])).all()
    pq.write_table(pa.table({"tokens": pa.array([[1, 2], [3]], pa.list_(pa.int32())), "doc_ids": [[0, 0], [0]]}),
                   tmp_path / "tokens" / "shard-00001.parquet")
    with pytest.raises(ValueError, match=r"shard-00001.parquet: column 'tokens' has rows of \[1, 2\] tokens"):
        list(load_token_shards(tmp_path))
    with pytest.raises(FileNotFoundError, match="no token shards"):
        next(load_token_shards(tmp_path / "nowhere"))
    (tmp_path / "tokens").rename(tmp_path / "tokens_midtrain")
    with pytest.raises(FileNotFoundError, match="tokens: no token shards"):
        next(load_token_shards(tmp_path))
    assert len(next(load_token_shards(tmp_path, "tokens_midtrain"))[0]) == len(rows)
