"""Curation blocks per core: our corruption filters, language ID and MinHash signatures against
datatrove 0.10.1's equivalents, on the same documents, in one process pinned to one core.

Documents (default 2,000, the same on every run of the same machine): Python stdlib docstrings and
the licences in /usr/share/common-licenses (prose), stdlib .py files (code) and man pages in
English and eight other languages (troff stripped roughly). Each block runs once to warm up, then
`--repeats` times; the table shows the median, as documents per CPU-second (process time, so other
load on a shared machine does not count against either side).

What is compared, block by block:
- corruption: our `corruption_scores` + `corruption_reason` (every score computed for every
  document) vs datatrove `GopherRepetitionFilter` then `GopherQualityFilter` (the second only on
  documents the first kept, as in a datatrove pipeline; each stops at its first failing rule).
- language ID: our `LanguageID.predict` vs fastText called the way datatrove's `FT176LID.predict`
  calls it (whole text, newlines to spaces, k=-1: all 176 labels into a dict, max taken), with
  the same lid.176.ftz. datatrove's `LanguageFilter` itself cannot run here: it requires the
  `fasteners` package and downloads lid.176.bin, and its FT176LID calls `.item()` on scores that
  fasttext-predict returns as floats.
- MinHash: our `signatures` (batches of 256) vs `MinhashDedupSignature.get_shingles` +
  `get_signature` per document (its per-document signature methods, not its file pipeline,
  which adds sorting and writing 14 bucket files), both 14 bands x 8 rows, 5-grams. datatrove's
  xxhash64 helper passes str, which the installed xxhash 4.x refuses; it gets the UTF-8 bytes.
datatrove's word tokenizer for English is spaCy's blank "en" pipeline. When spaCy is not
importable (it is not a project dependency) a regex tokenizer stands in for it and the printout
says so: that stand-in is cheaper than spaCy, so datatrove's figures are then flattering.
`--extra-site DIR` appends a folder (e.g. a `pip install --target DIR spacy`) to sys.path.

Run: .venv/bin/python benchmarks/curate_filters.py [--docs 2000] [--repeats 5] [--extra-site DIR]
"""
from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy loads: one core means one thread

import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import xxhash  # noqa: E402

from phi4ray.data.corpus import builtin_sources  # noqa: E402
from phi4ray.data.curate.filters import corruption_reason, corruption_scores  # noqa: E402
from phi4ray.data.curate.langid import LanguageID  # noqa: E402
from phi4ray.data.curate.minhash import MinHashConfig, signatures  # noqa: E402
from tests.test_curate_filters import man_pages  # noqa: E402


def corpus(n_docs: int) -> list[tuple[str, str, str]]:
    """(text, content_type, kind): up to 35% prose (as many docstring documents as the stdlib
    yields), 35% code, man pages for the rest, round-robin over nine languages."""
    share = int(n_docs * 0.35)
    src = builtin_sources(share)
    docs = [(d["text"], "text", "prose") for d in src["web"][:share]]
    docs += [(d["text"], "code", "code") for d in src["code"][:share]]
    langs = ["man1", "de", "fr", "es", "ja", "ru", "pl", "it", "pt"]
    pages = {lang: man_pages(lang, n_docs, min_chars=200) for lang in langs}
    for i in range(n_docs):
        for lang in langs:
            if len(docs) < n_docs and i < len(pages[lang]):
                docs.append((pages[lang][i], "text", f"man/{lang}"))
    return docs


def regex_tokenizer():
    # deferred: datatrove loads after --extra-site has joined sys.path (it looks for spaCy there)
    from datatrove.utils.word_tokenizers import WordTokenizer

    class RegexWordTokenizer(WordTokenizer):
        """Stand-in for spaCy's tokenizer: words and single punctuation marks."""
        _word = re.compile(r"\w+|[^\w\s]")

        def word_tokenize(self, text):
            return self._word.findall(text)

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    return RegexWordTokenizer("en")


def median_cpu(fn, repeats: int) -> float:
    fn()  # warm-up: model loads, caches, first-touch allocations
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--extra-site", default="", help="folder appended to sys.path (e.g. holding spaCy)")
    args = ap.parse_args()
    if args.extra_site:
        sys.path.append(args.extra_site)  # appended: the project's own packages win any overlap
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    # deferred: datatrove loads after --extra-site has joined sys.path (it looks for spaCy there)
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter

    docs = corpus(args.docs)
    texts = [t for t, _, _ in docs]
    kinds: dict[str, int] = {}
    for _, _, k in docs:
        kinds[k.split("/")[0]] = kinds.get(k.split("/")[0], 0) + 1
    mb = sum(len(t.encode()) for t in texts) / 2**20
    try:
        import spacy  # noqa: F401  # deferred: optional, not a project dependency

        tok, tok_note = "en", f"spaCy {spacy.__version__} blank 'en' (datatrove's own choice)"
    except ImportError:
        tok, tok_note = regex_tokenizer(), "regex stand-in (spaCy not installed; flatters datatrove)"

    # ---- the blocks ----
    dt_docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    rep, qual = GopherRepetitionFilter(language=tok), GopherQualityFilter(language=tok)
    verdict = {}

    lid = LanguageID()
    model = lid.model  # the same lid.176.ftz, loaded once
    # as in the pipeline, the filters get each document's language (stop words for English only,
    # no word-count rules for Japanese); found once here, outside the timed block
    langs = [lang if ct == "text" else "" for (lang, _), (_, ct, _) in zip(lid.predict(texts), docs)]

    def ours_corruption():
        verdict["ours"] = [corruption_reason(corruption_scores(t, ct), None, ct, lang) == ""
                           for (t, ct, _), lang in zip(docs, langs)]

    def datatrove_corruption():
        kept = []
        for d in dt_docs:
            r = rep.filter(d)
            ok = r is True or (isinstance(r, tuple) and r[0])
            if ok:
                q = qual.filter(d)
                ok = q is True or (isinstance(q, tuple) and q[0])
            kept.append(ok)
        verdict["datatrove"] = kept

    def ours_lid():
        lid.predict(texts)

    def datatrove_lid():
        for t in texts:  # datatrove.utils.lid.FastTextLID.predict, floats instead of numpy scalars
            langs, scores = model.predict(t.replace("\n", " "), k=-1)
            pairs = {lang.split("__")[2]: float(score) for lang, score in zip(langs, scores)}
            max(pairs.items(), key=lambda x: x[1])

    mh = MinHashConfig()
    signer = MinhashDedupSignature(output_folder=tempfile.mkdtemp(prefix="dt_minhash_"),
                                   config=MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8), language=tok)
    try:
        signer._hash_func("probe")
        hash_note = ""
    except TypeError:  # xxhash >= 4 takes bytes only; datatrove 0.10.1 passes str
        signer._hash_func = lambda s: xxhash.xxh64_intdigest(s.encode("utf-8"))
        hash_note = ("\ndatatrove MinHash: its xxhash64 helper passes str, which xxhash 4.x refuses; it is "
                     "called with the UTF-8 bytes instead (what xxhash 3.x did inside)")

    def ours_minhash():
        for lo in range(0, len(texts), 256):
            signatures(texts[lo:lo + 256], mh)

    def datatrove_minhash():
        for t in texts:
            shingles = signer.get_shingles(t)
            if shingles.size:
                signer.get_signature(shingles)

    blocks = [("corruption filters", ours_corruption, datatrove_corruption),
              ("language ID", ours_lid, datatrove_lid),
              ("MinHash signatures", ours_minhash, datatrove_minhash)]
    print(f"documents: {len(texts)} ({mb:.1f} MB; {', '.join(f'{k} {v}' for k, v in kinds.items())}); "
          f"one core (pid pinned, 1 BLAS/OMP thread), median of {args.repeats} runs after a warm-up, CPU time")
    print(f"datatrove word tokenizer: {tok_note}{hash_note}")
    rows, total = [], {"ours": 0.0, "datatrove": 0.0}
    for name, ours, theirs in blocks:
        t_ours, t_theirs = median_cpu(ours, args.repeats), median_cpu(theirs, args.repeats)
        total["ours"] += t_ours
        total["datatrove"] += t_theirs
        rows.append((name, len(texts) / t_ours, len(texts) / t_theirs))
    rows.append(("total (all three per document)", len(texts) / total["ours"], len(texts) / total["datatrove"]))
    print(f"\n{'block':32s} {'ours docs/s':>12s} {'datatrove docs/s':>17s} {'ours/datatrove':>15s}")
    for name, a, b in rows:
        print(f"{name:32s} {a:12.0f} {b:17.0f} {a / b:14.2f}x")
    print("\nkept by the corruption filters (ours | datatrove Gopher):", "; ".join(
        f"{kind} {sum(v for v, (_, _, k) in zip(verdict['ours'], docs) if k.startswith(kind))} | "
        f"{sum(v for v, (_, _, k) in zip(verdict['datatrove'], docs) if k.startswith(kind))} of {n}"
        for kind, n in kinds.items()))
    print("(ours: Gopher's bounds for prose, code-specific repetition bounds and no prose rules for code, the "
          "stop-word rule for English only, the language from our language ID; datatrove: every rule on every "
          "document, as English)")
    print("ours: all scores for every document; datatrove: stops at the first failing rule. "
          "language ID: ours scores a 4,000-character prefix with k=1, datatrove-style the whole text with k=-1. "
          "MinHash: ours hashes words once and rolls 5-gram hashes in numpy; datatrove hashes each joined 5-gram.")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/ for the corpus
    main()
