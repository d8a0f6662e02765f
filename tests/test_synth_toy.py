"""The verified toy source (phi4ray/toy/synth.py): generated = kept + rejected, every kept solution
checked independently of the generator, no held-out question in the data, and its tokens packed
into the pretraining mixture as a real synthetic share. No Ray, no model."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi4ray.data.mixtures import pretrain_mixture, source_files
from phi4ray.data.packing import load_token_shards, mixture_plan, plan_shares
from phi4ray.data.synth.outputs import OUT_SCHEMA, write_outputs
from phi4ray.data.token_shards import docs_file, pack_group, source_stats, tokenize_file
from phi4ray.evals.generators import builtin_suites
from phi4ray.model.phi4_tokenizer import phi4_tokenizer
from phi4ray.presets import run_preset
from phi4ray.run.errors import ConfigError
from phi4ray.run.overrides import OverrideError, apply_overrides
from phi4ray.toy import synth as toy
from phi4ray.toy.arith import PRIME_TEMPLATES, PRIMES, make_problems, split_of, worked_solution
from phi4ray.toy.evals import TOY_SUITES


def cfg_with(*overrides: str):
    return apply_overrides(run_preset("tiny"), list(overrides))


def boxed(text: str) -> str:
    return re.findall(r"\\boxed\{(-?\d+)\}", text)[-1]


def test_the_tiny_preset_turns_it_on_and_the_others_do_not():
    assert run_preset("tiny").synth.toy_problems > 0
    assert run_preset("small").synth.toy_problems == 0 == run_preset("phi4-14b").synth.toy_problems


def test_counts_add_up_and_every_kept_solution_is_verified():
    src = toy.toy_source(cfg_with("synth.toy_problems=300"))
    r = src.report
    assert r["generated"] == 300 == r["kept"] + r["rejected"] == len(src.docs) + len(src.dropped)
    assert r["by_kind"]["arith"]["generated"] + r["by_kind"]["prime"]["generated"] == 300
    assert sum(k["kept"] for k in r["by_kind"].values()) == r["kept"] and sum(r["dropped"].values()) == r["rejected"]
    # the noisy teacher names a non-prime about half the time: the oracle has real work to do
    assert 0.3 < r["rejected"] / r["by_kind"]["prime"]["generated"] < 0.7 and r["dropped"] == {"not_prime": r["rejected"]}
    for d in src.docs:  # each kept document re-checked here, by means other than the source's own
        question, answer = re.fullmatch(r"User: (.+)\n\nAssistant: (.+)", d["text"], re.S).groups()
        if d["kind"] == "prime":
            assert question in PRIME_TEMPLATES["train"] and int(boxed(answer)) in PRIMES
        else:
            assert int(boxed(answer)) == eval(question.removeprefix("What is ").removesuffix("?"))
        assert d["step"] == "toy" and json.loads(d["meta"])["extracted"] == boxed(answer)
    assert all(int(x["extracted"]) not in PRIMES for x in src.dropped)
    assert toy.toy_source(cfg_with("synth.toy_problems=300")).docs == src.docs  # deterministic


@pytest.mark.parametrize("solution, why", [
    ("3 + 5 = 8. 8 - 2 = 6. The answer is \\boxed{6}.", "ok"),
    ("3 + 5 = 9. 9 - 2 = 7. The answer is \\boxed{7}.", "wrong_step"),   # a step's sum is wrong
    ("3 + 5 = 8. 8 - 2 = 6. The answer is \\boxed{7}.", "wrong_answer"),  # right steps, wrong box
    ("The answer is \\boxed{5}.", "wrong_answer"),
])
def test_verify_recomputes_steps_and_answer(solution, why):
    assert toy.verify({"question": "What is 3 + 5 - 2?", "solution": solution, "answer": "6"}) == why


def test_verify_does_not_trust_the_generators_answer():
    # the generator works left to right; with * after + that is not the expression's value
    lr = {"question": "What is 2 + 3 * 4?", "solution": "2 + 3 = 5. 5 * 4 = 20. The answer is \\boxed{20}.",
          "answer": "20"}
    assert toy.evaluate(lr["question"]) == 14 and toy.verify(lr) == "wrong_answer"
    assert toy.verify({"question": "Name a prime number below 100.", "solution": "The answer is \\boxed{91}.",
                       "answer": "prime"}) == "not_prime"
    assert toy.evaluate("What is __import__('os')?") is None and toy.evaluate("What is 2 ** 3?") is None
    src = toy.toy_source(cfg_with("synth.toy_problems=200", "arith.ops=+*", "arith.prime_share=0"))
    assert src.report["dropped"].get("wrong_answer", 0) > 0  # those left-to-right products, caught
    assert all(toy.evaluate(q) == int(boxed(t)) for q, t in
               ((re.match(r"User: (.+?)\n", d["text"]).group(1), d["text"]) for d in src.docs))


def test_no_held_out_question_in_the_data():
    cfg = cfg_with("synth.toy_problems=2000")
    src = toy.toy_source(cfg)
    asked = {i.prompt for s in builtin_suites(cfg.eval.seed, cfg.eval.size, TOY_SUITES) for i in s.items}
    asked |= {p["question"] for p in make_problems(cfg.sft.heldout, cfg.seed, cfg.arith, split="test")}  # DPO's
    questions = {re.match(r"User: (.+?)\n", d["text"]).group(1) for d in src.docs}
    assert len(questions) > 1000 and not questions & asked and asked <= toy.heldout_questions(cfg)
    assert all(split_of(q) == "train" for q in questions if q not in PRIME_TEMPLATES["train"])


def _solved(question: str) -> dict:
    parts = question.removeprefix("What is ").removesuffix("?").split()
    solution, answer = worked_solution([int(x) for x in parts[::2]], parts[1::2])
    return {"id": "leak", "question": question, "solution": solution, "answer": str(answer)}


@pytest.mark.parametrize("leak", [
    _solved(builtin_suites(0, 5, ["toy_arith"])[0].items[3].prompt),  # an eval suite's question
    {"id": "leak", "question": PRIME_TEMPLATES["test"][1], "solution": "The answer is \\boxed{7}.", "answer": "prime"},
])
def test_a_held_out_question_stops_the_stage(monkeypatch, leak):
    real = toy.make_problems

    def leaky(n, seed, cfg, split="train"):  # a generator bug: one held-out question, rightly solved, slips in
        return real(n, seed, cfg, split)[:-1] + [leak]

    assert toy.verify(leak) == "ok"  # the verifier would keep it: only decontamination stands in the way
    monkeypatch.setattr(toy, "make_problems", leaky)
    with pytest.raises(AssertionError, match="1 held-out question"):
        toy.toy_source(cfg_with("synth.toy_problems=20"))
    prime = {"question": PRIME_TEMPLATES["test"][0], "kind": "prime"}
    with pytest.raises(AssertionError, match="1 held-out"):
        toy.check_decontaminated([prime], set())  # a held-out wording, even if no suite asked it


def test_config_errors_name_the_field():
    with pytest.raises(OverrideError, match="synth.toy_problems=-1 must be >= 0"):
        cfg_with("synth.toy_problems=-1")
    tiny_domain = cfg_with("synth.toy_problems=400", "arith.max_operand=2")  # 2^3 * 4 = 32 questions in all
    with pytest.raises(ConfigError, match="synth.toy_problems=400"):
        toy.toy_source(tiny_domain)


def _write(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts}), path)


def test_the_pretraining_mixture_packs_a_real_synthetic_share(tmp_path):
    """The tokenize stage's own mixture (pretrain_mixture) over a run with curated web and code and
    the toy source in RUN/synthetic: the synthetic source is there at the report's 40% weight, the
    plan gives it its full share, and its documents are what the packed rows hold."""
    cfg = cfg_with("synth.toy_problems=400", "data.total_tokens=6000")
    src = toy.toy_source(cfg)
    write_outputs(tmp_path, tmp_path / "synthesize", {}, cfg.synth, src)
    assert pq.read_schema(tmp_path / "synthetic" / "synthetic" / "toy.parquet").equals(OUT_SCHEMA)
    prose = "Rivers carry sand from the hills to the sea, and the sea sorts it by size over the years. " * 40
    _write(tmp_path / "curated" / "web" / "a.parquet", [prose] * 4)
    _write(tmp_path / "curated" / "code" / "a.parquet", ["def f(x):\n    return x + 1\n" * 80] * 4)
    mix = pretrain_mixture(tmp_path, cfg)
    assert {s.name: (s.paths, s.weight) for s in mix.sources} == {
        "synthetic": (("synthetic/synthetic",), 0.40), "web": (("curated/web",), 0.15),
        "code": (("curated/code",), 0.20)}
    # the tokenize stage's two passes, as actors/data/tokenize.py runs them on Ray Data, here in-process
    tok, cache = phi4_tokenizer(), tmp_path / "tokenized"
    files = {s.name: source_files(tmp_path, s) for s in mix.sources}
    for fs in files.values():
        for f in fs:
            tokenize_file(f, cache, tok)
    available = {s.name: int(sum(source_stats(docs_file(cache, f), s)["available"] for f in files[s.name]))
                 for s in mix.sources}
    assert available["synthetic"] > 0.5 * cfg.data.total_tokens  # enough for its whole share at one epoch
    plan = mixture_plan(available, mix, mix.total_tokens)
    shares = plan_shares(plan, available)
    assert shares["synthetic"] == pytest.approx(0.40 / 0.75, abs=1e-6)  # no web_rewrites, no acquired here
    i = [s.name for s in mix.sources].index("synthetic")
    out = tmp_path / "tokens"
    out.mkdir()
    packed = pack_group({"source_index": i, "group": 0, "epochs": plan["synthetic"],
                         "docs": [str(docs_file(cache, f)) for f in files["synthetic"]]}, mix, out)
    assert packed["tokens_packed"] >= 0.9 * shares["synthetic"] * cfg.data.total_tokens
    (tokens, _), = list(load_token_shards(tmp_path))  # one shard: this group's rows, from RUN/tokens
    assert tokens.shape[0] == packed["sequences"]
    text = tok.decode([t for t in tokens.reshape(-1).tolist() if t not in tok.special_ids])
    assert "Assistant:" in text and "\\boxed{" in text  # the verified problems are what was packed
