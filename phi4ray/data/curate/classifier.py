"""The quality classifier: fastText's supervised model in numpy, trained on LLM annotations of a
sample and applied to the whole corpus (FineWeb-Edu style: an LLM rates a sample of documents, a
cheap model learns the ratings and scores everything).

Features are hashed into `buckets` rows: word unigrams and bigrams, and character 3- to 5-grams of
the normalised text (spaces included, so they see word boundaries; they carry the signal for
scripts without spaces and for inflected languages). The document vector averages the mean row of
its word features and that of its character features (a plain mean, as fastText's, lets the ~3
character n-grams per character drown the word bigrams: ~2 points less held-out accuracy on prose
vs shuffled prose), then a linear layer and a softmax over the label values. Trained by plain SGD
with linearly decaying rate, one document at a time (as fastText does), in fp32, deterministic for
a seed. Only the first `max_chars` of a document are read, as FineWeb-Edu's classifier reads its
first 512 tokens: page openings say most about a page, and it bounds the cost per document.
"""
from __future__ import annotations

import json
import math
import time
import unicodedata
from dataclasses import asdict, dataclass
from itertools import chain

import fsspec
import numpy as np
import xxhash

from phi4ray.data.curate.decontam import batch_ngram_hashes, hash_words, words
from phi4ray.run.errors import ConfigError

__all__ = ["QualityClassifierConfig", "QualityClassifier", "ClassifierFileError", "train_classifier"]

_FORMAT = "phi4ray-quality-classifier/2"  # /2: word and character families averaged separately
_CHUNK = 64  # documents featurised together: numpy passes amortised, memory bounded


class ClassifierFileError(ValueError):
    """A saved classifier that cannot be loaded; the message names the file."""


@dataclass(frozen=True)
class QualityClassifierConfig:
    buckets: int = 1 << 18          # hashed feature rows; a power of two (buckets take the top hash bits)
    dim: int = 16
    # the stage trains on a sample of a few hundred annotated documents (annotate_docs), where 5
    # epochs leave a many-class task near chance; on thousands of documents 5 and 25 end level
    # (benchmarks/quality_classifier.py)
    epochs: int = 25
    # SGD rate, decayed linearly to 0 (as fastText). High because a feature row's gradient is divided
    # by the document's feature count (fastText's normalisation), so rows move slowly: at 0.5,
    # prose vs shuffled prose stayed at chance after 5 epochs; 1 to 5 all reach ~0.9.
    lr: float = 2.0
    word_ngrams: int = 2            # word n-grams 1..word_ngrams
    char_ngrams: tuple[int, int] = (3, 5)  # character n-grams lo..hi; (0, 0) for none
    max_chars: int = 4000           # the classifier reads a document's opening only
    threshold: float = 0.5          # keep() when score >= threshold
    seed: int = 0

    def __post_init__(self) -> None:
        def positive_int(name, value, hi):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= hi:
                raise ConfigError(f"quality.{name} must be an integer in [1, {hi}], got {value!r}")

        positive_int("buckets", self.buckets, 1 << 26)
        if self.buckets & (self.buckets - 1) or self.buckets < 1024:
            raise ConfigError(f"quality.buckets must be a power of two >= 1024, got {self.buckets!r}")
        positive_int("dim", self.dim, 1024)
        positive_int("epochs", self.epochs, 1000)
        positive_int("word_ngrams", self.word_ngrams, 5)
        positive_int("max_chars", self.max_chars, 10_000_000)
        lo_hi = self.char_ngrams
        if (not isinstance(lo_hi, tuple) or len(lo_hi) != 2 or not all(isinstance(v, int) for v in lo_hi)
                or not (lo_hi == (0, 0) or 1 <= lo_hi[0] <= lo_hi[1] <= 8)):
            raise ConfigError(f"quality.char_ngrams must be (lo, hi) with 1 <= lo <= hi <= 8, or (0, 0); "
                              f"got {lo_hi!r}")
        for name in ("lr", "threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(f"quality.{name} must be a finite number, got {value!r}")
        if self.lr <= 0:
            raise ConfigError(f"quality.lr must be > 0, got {self.lr!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"quality.seed must be an integer, got {self.seed!r}")


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64's mixers


def _salt(kind: str) -> np.uint64:
    return np.uint64(xxhash.xxh3_64_intdigest(kind.encode()))


def _bucket(h: np.ndarray, salt: np.uint64, bits: int) -> np.ndarray:
    """Spread hashes over 2^bits rows; the salt keeps feature kinds (word bigram, char 4-gram ..)
    from sharing rows systematically."""
    z = (h ^ salt) * _M1
    z = (z ^ (z >> np.uint64(31))) * _M2
    return (z >> np.uint64(64 - bits)).astype(np.int64)


def _features(texts: list[str], cfg: QualityClassifierConfig) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per feature kind (word 1-gram, word 2-gram, char 3-gram ..): (bucket, document) of each
    occurrence in the batch, in document order, and the kind's family (0 words, 1 characters)."""
    bits = cfg.buckets.bit_length() - 1
    norm = [" " + " ".join(unicodedata.normalize("NFKC", t[:cfg.max_chars]).casefold().split()) + " "
            for t in texts]
    toks = [words(t) for t in norm]
    wends = np.cumsum([len(t) for t in toks], dtype=np.int64)
    wh = hash_words(list(chain.from_iterable(toks)))
    streams = [(wh, wends, k, f"w{k}", 0) for k in range(1, cfg.word_ngrams + 1)]
    if cfg.char_ngrams != (0, 0):
        cends = np.cumsum([len(t) for t in norm], dtype=np.int64)
        # surrogatepass: a lone surrogate (text decoded with surrogateescape) is one more code point
        cps = np.frombuffer("".join(norm).encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
        streams += [(cps, cends, k, f"c{k}", 1) for k in range(cfg.char_ngrams[0], cfg.char_ngrams[1] + 1)]
    out = []
    for h, ends, k, kind, family in streams:
        grams, _, doc = batch_ngram_hashes(h, ends, k)
        out.append((_bucket(grams, _salt(kind), bits), doc, family))
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class QualityClassifier:
    def __init__(self, config: QualityClassifierConfig, classes, emb: np.ndarray, w: np.ndarray,
                 b: np.ndarray, metrics: dict | None = None):
        self.config = config
        self.classes = np.asarray(classes, dtype=np.int64)  # label value of each output column
        self.emb, self.w, self.b = emb, w, b                # (buckets, dim), (classes, dim), (classes,)
        self.metrics = metrics or {}

    def _doc_vectors(self, texts: list[str]) -> np.ndarray:
        """Each text's vector: the mean row of its word features and that of its character
        features, averaged. Per kind the rows come in document order, so a document's sum is one
        segment of a reduceat."""
        total = np.zeros((2, len(texts), self.config.dim), dtype=np.float32)
        n = np.zeros((2, len(texts)), dtype=np.int64)
        for ids, doc, family in _features(texts, self.config):
            counts = np.bincount(doc, minlength=len(texts))
            has = counts > 0
            if has.any():
                starts = np.cumsum(counts) - counts
                # np.take: several times faster than fancy indexing for a row gather
                total[family, has] += np.add.reduceat(np.take(self.emb, ids, axis=0), starts[has], axis=0)
            n[family] += counts
        means = total / np.maximum(n, 1)[:, :, None]
        return means.sum(axis=0) / np.maximum((n > 0).sum(axis=0), 1)[:, None]

    def predict_proba(self, texts) -> np.ndarray:
        """(len(texts), len(classes)) probabilities; a row of NaN for a text that is not a str."""
        texts = list(texts)
        ok = np.array([isinstance(t, str) for t in texts], dtype=bool)
        out = np.full((len(texts), len(self.classes)), np.nan, dtype=np.float32)
        good = [t for t, g in zip(texts, ok) if g]
        if good:
            # in chunks: the gathered feature rows of a chunk are ~1 MB a document at max_chars=4000
            x = np.concatenate([self._doc_vectors(good[i:i + _CHUNK]) for i in range(0, len(good), _CHUNK)])
            out[ok] = _softmax(x @ self.w.T + self.b)
        return out

    def score(self, texts) -> np.ndarray:
        """Expected label value: with labels {0 drop, 1 keep}, the probability of keep; with 0..5
        scores as classes, the expected score. NaN for a text that is not a str."""
        return self.predict_proba(texts).astype(np.float64) @ self.classes.astype(np.float64)

    def keep(self, texts) -> np.ndarray:
        return self.score(texts) >= self.config.threshold  # NaN compares False: not kept

    # --- files -----------------------------------------------------------------------------------
    @staticmethod
    def sidecar(path: str) -> str:
        return (path[:-4] if path.endswith(".npz") else path) + ".json"

    def save(self, path) -> str:
        """Write `path` (.npz: the weights) and its .json sidecar (format, config, classes, metrics)."""
        path = str(path)
        if not path.endswith(".npz"):
            raise ValueError(f"classifier path {path!r} must end in .npz")
        with fsspec.open(path, "wb") as f:
            # untouched rows stay exactly zero (see train_classifier), so they compress away
            np.savez_compressed(f, emb=self.emb, w=self.w, b=self.b, classes=self.classes)
        meta = {"format": _FORMAT, "config": asdict(self.config), "classes": self.classes.tolist(),
                "metrics": self.metrics}
        with fsspec.open(self.sidecar(path), "wt") as f:
            json.dump(meta, f, indent=1)
        return path

    @classmethod
    def load(cls, path) -> "QualityClassifier":
        path = str(path)
        side = cls.sidecar(path)
        try:
            with fsspec.open(side, "rt") as f:
                meta = json.load(f)
            cfg = dict(meta["config"])
            cfg["char_ngrams"] = tuple(cfg["char_ngrams"])
            config = QualityClassifierConfig(**cfg)
            if meta.get("format") != _FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {_FORMAT!r}")
        except FileNotFoundError:
            raise FileNotFoundError(f"classifier sidecar {side} not found (it goes beside {path})") from None
        except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as e:
            raise ClassifierFileError(f"classifier sidecar {side} is not valid: {e}") from None
        try:
            with fsspec.open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("emb", "w", "b", "classes")}
        except FileNotFoundError:
            raise FileNotFoundError(f"classifier weights {path} not found") from None
        except Exception as e:  # a truncated or foreign file: zipfile, pickle and npy errors alike
            raise ClassifierFileError(f"classifier weights {path} are unreadable: {type(e).__name__}: {e}") from None
        n_cls = len(arrays["classes"])
        expect = {"emb": (config.buckets, config.dim), "w": (n_cls, config.dim), "b": (n_cls,)}
        for k, shape in expect.items():
            if arrays[k].shape != shape:
                raise ClassifierFileError(f"classifier weights {path}: {k} has shape {arrays[k].shape}, "
                                          f"the sidecar's config says {shape}")
        return cls(config, arrays["classes"], arrays["emb"].astype(np.float32), arrays["w"].astype(np.float32),
                   arrays["b"].astype(np.float32), meta.get("metrics", {}))


def _split_features(texts: list[str], cfg: QualityClassifierConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per document: its distinct feature rows and their summed weights in its vector, so one SGD
    step touches each row once."""
    if len(texts) > _CHUNK:
        return [f for i in range(0, len(texts), _CHUNK) for f in _split_features(texts[i:i + _CHUNK], cfg)]
    feats = _features(texts, cfg)
    ids = np.concatenate([f[0] for f in feats])
    group = np.concatenate([f[1] * 2 + f[2] for f in feats])  # (document, family)
    n = np.bincount(group, minlength=2 * len(texts))
    families = (n.reshape(-1, 2) > 0).sum(axis=1)
    # the same weights as _doc_vectors: family mean, then the mean over the families present
    weight = 1.0 / (n[group] * families[group // 2])
    doc = group // 2
    uniq, inverse = np.unique(doc * cfg.buckets + ids, return_inverse=True)
    wsum = np.bincount(inverse, weights=weight, minlength=len(uniq)).astype(np.float32)
    udoc, uid = uniq // cfg.buckets, uniq % cfg.buckets
    cuts = np.cumsum(np.bincount(udoc, minlength=len(texts)))[:-1]
    return list(zip(np.split(uid, cuts), np.split(wsum, cuts)))


def train_classifier(texts, labels, config: QualityClassifierConfig | None = None,
                     heldout_fraction: float = 0.2) -> tuple[QualityClassifier, dict]:
    """Train on (text, label) pairs; labels are small non-negative ints (0/1 from
    labels_from_annotations, or 0..5 scores as classes). A None label or a text that is not a str
    is left out and counted. Returns the classifier and its metrics: held-out accuracy,
    per-class counts, train and held-out sizes (+ unlabelled, bad_text: they add up to examples).
    """
    cfg = config or QualityClassifierConfig()
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction={heldout_fraction!r} must be in [0, 1)")
    for i, y in enumerate(labels):
        if y is not None and (not isinstance(y, (int, np.integer)) or y < 0):
            raise ValueError(f"labels[{i}]={y!r}: labels are non-negative integers (or None: unlabelled)")
    rows = [i for i, (t, y) in enumerate(zip(texts, labels)) if y is not None and isinstance(t, str)]
    classes = sorted({int(labels[i]) for i in rows})
    if len(classes) < 2:
        raise ValueError(f"training needs at least two classes among the labelled texts, got {classes}")
    col = {c: j for j, c in enumerate(classes)}
    y = np.array([col[int(labels[i])] for i in rows], dtype=np.int64)
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(rows))
    n_held = min(len(rows) - 1, round(heldout_fraction * len(rows))) if heldout_fraction else 0
    held, train = perm[:n_held], perm[n_held:]
    t0 = time.perf_counter()
    feats = _split_features([texts[rows[i]] for i in train], cfg)

    # Rows start at exactly zero and the output layer random: a feature never seen in training adds
    # nothing to a document's vector (instead of noise), and the saved file compresses.
    emb = np.zeros((cfg.buckets, cfg.dim), dtype=np.float32)
    w = (rng.standard_normal((len(classes), cfg.dim)) / math.sqrt(cfg.dim)).astype(np.float32)
    b = np.zeros(len(classes), dtype=np.float32)
    steps, step = cfg.epochs * len(train), 0
    for _ in range(cfg.epochs):
        for j in rng.permutation(len(train)):
            lr = np.float32(cfg.lr * (1 - step / steps))
            step += 1
            ids, wt = feats[j]
            rows_j = emb[ids]
            x = wt @ rows_j
            g = _softmax(w @ x + b)
            g[y[train[j]]] -= 1  # d(cross-entropy)/d(logits)
            gx = g @ w
            w -= lr * np.outer(g, x)
            b -= lr * g
            emb[ids] = rows_j - lr * np.outer(wt, gx)
    clf = QualityClassifier(cfg, classes, emb, w, b)

    class_counts = {str(c): int((y == col[c]).sum()) for c in classes}
    metrics = {"examples": len(texts), "train_size": len(train), "heldout_size": len(held),
               "unlabelled": sum(v is None for v in labels),
               "bad_text": sum(v is not None and not isinstance(t, str) for t, v in zip(texts, labels)),
               "class_counts": class_counts, "heldout_accuracy": None, "heldout_class_accuracy": {},
               "train_seconds": round(time.perf_counter() - t0, 3)}
    if n_held:
        pred = clf.predict_proba([texts[rows[i]] for i in held]).argmax(axis=1)
        truth = y[held]
        metrics["heldout_accuracy"] = float((pred == truth).mean())
        metrics["heldout_class_accuracy"] = {str(c): float((pred[truth == j] == j).mean())
                                             for j, c in enumerate(classes) if (truth == j).any()}
    clf.metrics = metrics
    return clf, metrics

