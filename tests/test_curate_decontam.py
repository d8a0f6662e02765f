"""Decontamination: evaluation files -> hashed n-gram index -> contaminated training documents."""
from __future__ import annotations

import gzip
import json
import pickle

import pytest

from phi4ray.data.curate.decontam import DecontamConfig, EvalIndex, EvalSetError, normalize, words
from phi4ray.run.errors import ConfigError

QUESTION = ("A train leaves the station at 3 pm travelling at 60 miles per hour, and a second train leaves "
            "the same station one hour later at 80 miles per hour. At what time does the second train "
            "catch up with the first?")
SHORT = "Name the largest moon orbiting Neptune today."  # 7 words: indexed by its 7-grams


@pytest.fixture
def eval_files(tmp_path):
    mmlu = tmp_path / "mmlu.jsonl"
    rows = [
        {"id": "alg-1", "question": "Which of the following is the value of x in the equation 2x + 3 = 11?",
         "choices": ["2", "3", "4", "5"]},
        {"id": "phys-7", "question": QUESTION, "choices": ["5 pm", "6 pm", "7 pm", "8 pm"]},
        {"question": "What is the capital of France?", "choices": ["Paris", "Rome", "Berlin", "Madrid"]},
    ]
    mmlu.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    trivia = tmp_path / "trivia.txt"
    trivia.write_text(f"{SHORT}\nok\n")
    return [mmlu, trivia]


def test_verbatim_copy_with_case_punctuation_and_spacing_changes_is_caught(eval_files):
    index = EvalIndex.from_files(eval_files)
    mangled = QUESTION.upper().replace(",", " ;").replace(" ", "   \n ").replace("?", "!!")
    doc = "Homework help forum.\n\nPosted by user42:\n" + mangled + "\n\nAnswer: 6 pm, since it gains 20 mph."
    hit = index.check(doc)
    assert hit is not None
    assert (hit.suite, hit.item_id) == ("mmlu", "phys-7")
    assert hit.matches >= 20 and hit.items == 1
    assert len(hit.ngram.split()) == 13 and hit.ngram in normalize(QUESTION)


def test_shared_common_phrases_are_not_contamination(eval_files):
    index = EvalIndex.from_files(eval_files)
    doc = ("Which of the following is the value of a good education? A train leaves the station at dawn. "
           "What is the capital of France? Everyone knows it is Paris. The second train catch up with "
           "the first one near the largest moon orbiting Neptune, travelling at 60 miles per hour.")
    assert index.check(doc) is None


def test_short_item_is_caught_by_its_7_grams_and_tiny_items_are_not_indexed(eval_files):
    index = EvalIndex.from_files(eval_files)
    hit = index.check("Quiz night! Round two: name the LARGEST moon orbiting neptune... (today)")
    assert hit is not None and (hit.suite, hit.item_id) == ("trivia", "1")
    assert len(hit.ngram.split()) == 7
    # "ok" and the capital-of-France question (6 words) are too short to index
    assert index.stats["trivia"] == {"items": 2, "indexed": 1, "too_short": 1}
    assert index.stats["mmlu"] == {"items": 3, "indexed": 2, "too_short": 1}
    assert index.check("ok ok ok ok ok ok ok ok") is None


def test_check_batch_matches_check_and_documents_do_not_bleed_into_each_other(eval_files):
    index = EvalIndex.from_files(eval_files)
    words_ = normalize(QUESTION).split()
    # the first half of the question ends one document, the second half starts the next: no 13-gram
    # lies inside either document, though the batch laid end to end contains the whole question
    docs = ["intro " + " ".join(words_[:10]), " ".join(words_[10:20]) + " outro", None, "", "lone \udce9 surrogate",
            QUESTION]
    batch = index.check_batch(docs)
    assert batch == [index.check(d) for d in docs]
    assert batch[:5] == [None] * 5
    assert batch[5].item_id == "phys-7"


def test_index_is_small_and_survives_pickling(eval_files):
    index = EvalIndex.from_files(eval_files)
    clone = pickle.loads(pickle.dumps(index))
    assert clone.check(QUESTION) == index.check(QUESTION)
    assert len(pickle.dumps(index)) < 4096 and len(index) == index.nbytes // 12


def test_plain_text_whole_file_mode_and_compressed_jsonl(tmp_path):
    essay = tmp_path / "essay.txt"
    essay.write_text("The committee decided\nthat the old bridge over the river\nwould be rebuilt in stone.\n")
    gz = tmp_path / "gsm.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps({"problem": "Natalia sold clips to 48 of her friends in April and then half as "
                                       "many in May."}) + "\n")
    index = EvalIndex.from_files({"essays": essay, "gsm": gz}, DecontamConfig(text_mode="file"))
    hit = index.check("... the committee decided that the old bridge over the river would be rebuilt in stone")
    assert (hit.suite, hit.item_id) == ("essays", "file")  # the 13-gram runs across the file's lines
    assert index.check("natalia sold clips to 48 of her friends in april and then half").suite == "gsm"


def test_empty_eval_file_raises_naming_it(tmp_path):
    empty = tmp_path / "arc.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(EvalSetError, match=r"arc\.jsonl: eval file has no items"):
        EvalIndex.from_files([empty])


def test_malformed_jsonl_line_raises_with_file_and_line(tmp_path):
    bad = tmp_path / "hellaswag.jsonl"
    bad.write_text(json.dumps({"question": "fine"}) + "\n\n" + '{"question": "broken\n')
    with pytest.raises(EvalSetError, match=r"hellaswag\.jsonl:3: not valid JSON"):
        EvalIndex.from_files([bad])
    bad.write_text(json.dumps({"question": "fine"}) + "\n" + json.dumps({"label": 3}) + "\n")
    with pytest.raises(EvalSetError, match=r"hellaswag\.jsonl:2: none of the fields"):
        EvalIndex.from_files([bad])
    bad.write_text("[1, 2]\n")
    with pytest.raises(EvalSetError, match=r"hellaswag\.jsonl:1: expected a JSON object"):
        EvalIndex.from_files([bad])


def test_missing_file_and_clashing_suite_names(tmp_path):
    with pytest.raises(EvalSetError, match=r"nope\.jsonl: eval file not found"):
        EvalIndex.from_files([tmp_path / "nope.jsonl"])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "test.txt").write_text("one line of an evaluation set with enough words\n")
    with pytest.raises(EvalSetError, match="both name suite 'test'"):
        EvalIndex.from_files([tmp_path / "a" / "test.txt", tmp_path / "b" / "test.txt"])


def test_normalisation():
    assert words("Ｆｕｌｌ-width ＡＢＣ, café_au  lait!") == ["full", "width", "abc", "café", "au", "lait"]
    assert words("東京タワー") == ["東", "京", "タ", "ワ", "ー"]  # CJK: a word per character
    assert normalize("STRASSE") == normalize("Straße")  # casefold, not lower


@pytest.mark.parametrize("field, value", [("n", 0), ("short_n", 13), ("min_item_words", 3),
                                          ("text_mode", "pages"), ("text_fields", ["question"])])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"decontam.{field}"):
        DecontamConfig(**{field: value})
