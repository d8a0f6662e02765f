r"""One converter per public benchmark format: which files it reads, and how one record becomes an
`EvalItem`. A record the converter cannot use raises `BadRecord` (or the item's own `SuiteError`)
with the reason; `writer.convert` quarantines it.

- `gsm8k`: JSONL / Parquet rows {"question", "answer"}; the reference is the number after the
  answer's last "####", commas removed.
- `math`: Hendrycks MATH rows {"problem", "level", "type", "solution"} as JSONL, Parquet, one
  per-problem JSON file or a folder of them; the reference is the row's "answer" when it has one
  (MATH-500), else the content of the solution's last \boxed{...}.
- `mmlu`: the original CSV files (question, A, B, C, D, letter; no header; the subject from the file
  name, a folder of them too) or Hugging Face rows {"question", "subject", "choices", "answer": 0-3}.
- `mmlu_pro`: rows {"question_id", "question", "options" (up to 10), "answer": "C",
  "answer_index": 2, "category"}.
- `gpqa`: the CSV with a header. The options [correct, incorrect 1-3] are put in the order
  `random.Random(f"gpqa:{seed}:{Record ID}").shuffle([0, 1, 2, 3])` gives (`--seed`, default 0):
  an item's order depends only on the seed and its record, never on the file's order or process.
- `mgsm`: TSV lines question<TAB>number; the language from `--language` or the file name (mgsm_de.tsv).
- `humanevalplus`: EvalPlus rows {"task_id", "prompt", "entry_point", "canonical_solution", "test"},
  as `phi4ray.evals.humaneval` makes HumanEval's: the tests run `test` then `check(entry_point)`.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from phi4ray.evals.converters.readers import (
    ConvertError,
    Reader,
    Record,
    csv_dicts,
    csv_rows,
    each_file,
    json_file,
    jsonl_records,
    parquet_rows,
    text_lines,
)
from phi4ray.evals.humaneval import humaneval_item
from phi4ray.evals.kinds import LETTERS
from phi4ray.evals.schema import EvalItem
from phi4ray.verify.oracles import last_boxed

NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:/\d+)?")
MMLU_SPLITS = re.compile(r"_(?:test|dev|val|validation|train|auxiliary_train)$")


class BadRecord(ValueError):
    """A record this format cannot use; the message is the quarantine reason."""


@dataclass(frozen=True)
class Source:
    """What a record's conversion reads besides the record: the input path and the options."""
    path: Path
    seed: int = 0  # gpqa: the option shuffle's seed
    language: str = ""  # mgsm: the items' language

    def origin(self, rec: Record) -> str:
        """The record's place as an item's meta["source"]: its file relative to the input, and line."""
        base = self.path if self.path.is_dir() else self.path.parent
        return f"{Path(os.path.relpath(rec.file, base)).as_posix()}:{rec.line}"


@dataclass(frozen=True)
class Format:
    name: str
    kind: str
    readers: dict[str, Reader]  # shape_of(input) -> reader
    item: Callable[[Record, Source], EvalItem]
    suite: Callable[[Source], str]  # the default suite name


# --- fields -----------------------------------------------------------------------------------------
def _row(rec: Record) -> dict:
    if not isinstance(rec.value, dict):
        raise BadRecord(f"expected an object with named fields, got {type(rec.value).__name__}")
    return rec.value


def _nonempty(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRecord(f"{what} is {'missing' if value is None else 'not a non-empty string'}")
    return value.strip()


def _text(row: dict, key: str) -> str:
    return _nonempty(row.get(key), repr(key))


def _number(text: str, what: str) -> str:
    value = text.strip().replace(",", "")
    if not NUMBER.fullmatch(value):
        raise BadRecord(f"{what} is {text.strip()[:80]!r}, not a number")
    return value


def _index(value: Any, n: int, what: str) -> int:
    """An answer given as a 0-based index, a digit string or a letter, as an index below n."""
    if isinstance(value, str) and value.strip().upper() in tuple(LETTERS[:n]):
        return LETTERS.index(value.strip().upper())
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n:
        return value
    raise BadRecord(f"{what}={value!r} is not one of the {n} options")


def _choice(item_id: str, question: str, options: list, correct: int, meta: dict) -> EvalItem:
    """A choice item as the built-in suites write one: the question, then "A. option" lines."""
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise BadRecord("the options must be a list of strings")
    options = [o.strip() for o in options]
    lines = "\n".join(f"{LETTERS[j]}. {o}" for j, o in enumerate(options))
    return EvalItem(item_id, "choice", f"{question}\n\n{lines}", LETTERS[correct], choices=tuple(options), meta=meta)


# --- the formats ----------------------------------------------------------------------------------------
def gsm8k_item(rec: Record, src: Source) -> EvalItem:
    row = _row(rec)
    question, answer = _text(row, "question"), _text(row, "answer")
    if "####" not in answer:
        raise BadRecord("the answer has no final '#### N'")
    reference = _number(answer.rsplit("####", 1)[1], "the answer after ####")
    return EvalItem(f"gsm8k-{rec.line}", "math", question, reference, meta={"source": src.origin(rec)})


def math_item(rec: Record, src: Source) -> EvalItem:
    row = _row(rec)
    problem = _text(row, "problem")
    answer = row.get("answer")
    if isinstance(answer, str) and answer.strip():
        reference = answer.strip()
    else:
        reference = (last_boxed(_text(row, "solution")) or "").strip()
        if not reference:
            raise BadRecord("the solution has no \\boxed{...} answer (and the row no 'answer')")
    unique = row.get("unique_id")  # MATH-500: "test/precalculus/807.json"
    if isinstance(unique, str) and unique.strip():
        name = unique.strip().removesuffix(".json").replace("/", "-")
    elif rec.file.endswith(".json"):  # a per-problem file: MATH/test/algebra/1.json -> test-algebra-1
        name = "-".join(Path(rec.file).with_suffix("").parts[-3:])
    else:
        name = str(rec.line)
    meta = {"source": src.origin(rec)}
    meta.update({k: row[k] for k in ("level", "type", "subject") if isinstance(row.get(k), (str, int))})
    return EvalItem(f"math-{name}", "math", problem, reference, meta=meta)


def mmlu_item(rec: Record, src: Source) -> EvalItem:
    if isinstance(rec.value, list):  # the original CSV: question, A, B, C, D, answer letter
        if len(rec.value) != 6:
            raise BadRecord(f"{len(rec.value)} fields; an MMLU CSV record has 6 (question, A, B, C, D, answer)")
        question, *options, letter = rec.value
        subject = MMLU_SPLITS.sub("", Path(rec.file).name.split(".")[0])
        correct = _index(letter, 4, "answer")
    else:
        row = _row(rec)
        question, options = row.get("question"), row.get("choices")
        subject = row.get("subject") if isinstance(row.get("subject"), str) else ""
        if not isinstance(options, list) or len(options) < 2:
            raise BadRecord("'choices' must be a list of at least 2 options")
        correct = _index(row.get("answer"), len(options), "answer")
    question = _nonempty(question, "the question")
    prefix = f"mmlu-{subject}" if subject else "mmlu"
    return _choice(f"{prefix}-{rec.line}", question, options, correct, {"source": src.origin(rec), "subject": subject})


def mmlu_pro_item(rec: Record, src: Source) -> EvalItem:
    row = _row(rec)
    question, options = _text(row, "question"), row.get("options")
    if not isinstance(options, list) or not 2 <= len(options) <= 10:
        raise BadRecord("'options' must be a list of 2 to 10 options")
    given = [k for k in ("answer", "answer_index") if row.get(k) is not None]
    if not given:
        raise BadRecord("neither 'answer' nor 'answer_index' is given")
    picks = {_index(row[k], len(options), k) for k in given}
    if len(picks) > 1:
        raise BadRecord(f"answer={row['answer']!r} and answer_index={row['answer_index']!r} disagree")
    qid = row.get("question_id")
    name = str(qid) if isinstance(qid, (int, str)) and str(qid).strip() else f"line{rec.line}"
    meta = {"source": src.origin(rec)}
    meta.update({k: row[k] for k in ("question_id", "category", "src") if isinstance(row.get(k), (str, int))})
    return _choice(f"mmlu_pro-{name}", question, options, picks.pop(), meta)


GPQA_WRONG = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def gpqa_item(rec: Record, src: Source) -> EvalItem:
    row = _row(rec)
    record_id = _text(row, "Record ID")
    question, correct = _text(row, "Question"), _text(row, "Correct Answer")
    texts = [correct] + [_text(row, k) for k in GPQA_WRONG]
    # the order depends on the seed and the record alone: a str seed hashes the same in every process
    order = list(range(4))
    random.Random(f"gpqa:{src.seed}:{record_id}").shuffle(order)
    meta = {"source": src.origin(rec), "record_id": record_id, "seed": src.seed}
    meta.update({k: row[c].strip() for k, c in (("domain", "High-level domain"), ("subdomain", "Subdomain"))
                 if isinstance(row.get(c), str) and row[c].strip()})
    return _choice(f"gpqa-{record_id}", question, [texts[i] for i in order], order.index(0), meta)


MGSM_FILE = re.compile(r"mgsm_([A-Za-z]{2,3})(?![A-Za-z])")


def mgsm_language(src: Source) -> str:
    found = MGSM_FILE.search(src.path.name)
    if src.language or found:
        return src.language or found.group(1)
    raise ConvertError(f"mgsm: cannot tell the language of {src.path.name} (name it mgsm_<lang>.tsv or pass --language)")


def mgsm_item(rec: Record, src: Source) -> EvalItem:
    line = rec.value if isinstance(rec.value, str) else ""
    if "\t" not in line:
        raise BadRecord("expected question<TAB>answer")
    question, answer = line.rsplit("\t", 1)
    question = _nonempty(question, "the question")
    lang = mgsm_language(src)
    return EvalItem(f"mgsm_{lang}-{rec.line}", "math", question, _number(answer, "the answer"),
                    meta={"source": src.origin(rec), "lang": lang})


def humanevalplus_item(rec: Record, src: Source) -> EvalItem:
    row = _row(rec)
    for key in ("task_id", "prompt", "entry_point", "canonical_solution", "test"):
        _text(row, key)
    prefix, _, number = row["task_id"].strip().rpartition("/")
    if not prefix or not number:
        raise BadRecord(f"task_id={row['task_id']!r} is not like 'HumanEval/0'")
    item = humaneval_item({**row, "task_id": f"{prefix}/{number}"})
    meta = {**item.meta, "source": src.origin(rec)}
    meta.update({f"{k}s": len(row[k]) for k in ("base_input", "plus_input") if isinstance(row.get(k), list)})
    return replace(item, id=f"{prefix.lower()}plus-{number}", meta=meta)


ROWS = {"jsonl": jsonl_records, "json": jsonl_records, "parquet": parquet_rows}  # .json: HF's to_json writes lines
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("gsm8k", "math", ROWS, gsm8k_item, lambda src: "gsm8k"),
    Format("math", "math", {**ROWS, "json": json_file, "dir": each_file(".json", json_file)},
           math_item, lambda src: "math"),
    Format("mmlu", "choice", {**ROWS, "csv": csv_rows, "dir": each_file(".csv", csv_rows)},
           mmlu_item, lambda src: "mmlu"),
    Format("mmlu_pro", "choice", ROWS, mmlu_pro_item, lambda src: "mmlu_pro"),
    Format("gpqa", "choice", {"csv": csv_dicts}, gpqa_item, lambda src: "gpqa"),
    Format("mgsm", "math", {"tsv": text_lines, "txt": text_lines}, mgsm_item, lambda src: f"mgsm_{mgsm_language(src)}"),
    Format("humanevalplus", "code", {"jsonl": jsonl_records, "parquet": parquet_rows}, humanevalplus_item,
           lambda src: "humanevalplus"),
)}
