"""Quality scoring: LLM annotations, a small fastText-like classifier trained on them, and passages.

Phi-4 filters organic web data with small classifiers trained on LLM-generated annotations
(FineWeb-Edu style: an LLM rates a sample of documents, a cheap model learns the ratings and scores
the whole corpus), and curates seeds by splitting pages into passages scored for factual and
reasoning content. This module holds the plain-Python parts; actors/curate.py runs them on Ray Data.

- Annotation: `annotation_prompt` renders a versioned template; the LLM call happens in the actor
  (sampler fleet or endpoint); `parse_annotation` reads the reply (None when it cannot, never
  raises) and stamps the template id and version on the result, so annotations made with different
  prompts are never pooled unknowingly. `labels_from_annotations` turns them into keep/drop labels.
- Classifier: fastText's supervised model in numpy. Features are hashed into `buckets` rows: word
  unigrams and bigrams, and character 3- to 5-grams of the normalised text (spaces included, so
  they see word boundaries; they carry the signal for scripts without spaces and for inflected
  languages). The document vector averages the mean row of its word features and that of its
  character features (a plain mean, as fastText's, lets the ~3 character n-grams per character
  drown the word bigrams: ~2 points less held-out accuracy on prose vs shuffled prose), then a
  linear layer and a softmax over the label values. Trained by plain SGD with linearly decaying rate, one document at
  a time (as fastText does), in fp32, deterministic for a seed. Only the first `max_chars` of a
  document are read, as FineWeb-Edu's classifier reads its first 512 tokens: page openings say most
  about a page, and it bounds the cost per document.
- Passages: `segment_passages` cuts a document at paragraph and heading boundaries into passages of
  bounded size, keeping fenced code blocks and $$ formulas whole; `passage_scores` gives cheap
  heuristic factual / reasoning scores (see its docstring for what they measure and miss).
"""
from __future__ import annotations

import bisect
import json
import math
import re
import time
import unicodedata
from dataclasses import asdict, dataclass
from itertools import chain

import fsspec
import numpy as np
import xxhash

from phi4ray.config import ConfigError
from phi4ray.curate.decontam import batch_ngram_hashes, hash_words, words

__all__ = ["AnnotationTemplate", "ANNOTATION_TEMPLATE_V1", "annotation_prompt", "parse_annotation",
           "labels_from_annotations", "QualityClassifierConfig", "QualityClassifier", "ClassifierFileError",
           "train_classifier", "segment_passages", "passage_scores"]


# --- LLM annotation ------------------------------------------------------------------------------
SCORE_MIN, SCORE_MAX = 0, 5


@dataclass(frozen=True)
class AnnotationTemplate:
    id: str       # both recorded on every annotation: change the wording, bump the version
    version: str
    text: str     # placeholder {document}


ANNOTATION_TEMPLATE_V1 = AnnotationTemplate(
    id="phi4ray-edu-annotation",
    version="1",
    text=(
        "Below is an extract from a document. Rate it on two scales, each an integer from 0 to 5.\n\n"
        "Educational value: how useful it is for teaching at primary school to university level.\n"
        "0 = no educational value: advertising, navigation, spam, chit-chat or broken text.\n"
        "1 = some basic information relevant to an educational topic, mixed with unrelated content.\n"
        "2 = touches on educational elements but is superficial or disorganised.\n"
        "3 = appropriate for educational use and introduces key concepts coherently.\n"
        "4 = highly relevant and beneficial, like a chapter of a textbook or a tutorial.\n"
        "5 = outstanding: clear, thorough, with exercises or worked examples.\n\n"
        "Reasoning depth: how much step-by-step reasoning it shows.\n"
        "0 = none: facts, lists or fragments without any argument.\n"
        "1 = occasional explanations of why something holds.\n"
        "3 = explanations that derive conclusions from premises in several steps.\n"
        "5 = rigorous multi-step reasoning: proofs, derivations, worked solutions.\n\n"
        "[Document]\n{document}\n[End of Document]\n\n"
        "Answer with exactly these three lines and nothing else:\n"
        "Justification: <one or two sentences>\n"
        "Educational value: N\n"
        "Reasoning depth: N"
    ),
)

_MAX_REPLY = 20_000  # reply text past this is junk; bounds the regex work
_DRESS = r"^[ \t>*#_-]*"
_NUM = (r"(?:[ \t]+score)?(?:[ \t]*\([^)\n]{0,20}\))?[ \t*_]*(?::|=|-|is)[ \t*_]*"
        r"(-?\d{1,3}(?:\.\d+)?)(?:[ \t]*(?:/|out[ \t]+of)[ \t]*(\d{1,3}))?")
_EDU = re.compile(_DRESS + r"educational(?:[ \t_-]+value)?" + _NUM, re.I | re.M)
_REASON = re.compile(_DRESS + r"reasoning(?:[ \t_-]+depth)?" + _NUM, re.I | re.M)
_WHY = re.compile(_DRESS + r"justification[ \t*_]*[:=-][ \t*_]*([^\n]*)", re.I | re.M)


def annotation_prompt(text: str, max_chars: int = 3000,
                      template: AnnotationTemplate = ANNOTATION_TEMPLATE_V1) -> str:
    """The judge prompt for one document, cut to `max_chars` at a space (marked "[...]")."""
    if not isinstance(text, str):
        raise TypeError(f"annotation_prompt needs a str document, got {type(text).__name__}")
    if max_chars < 1:
        raise ValueError(f"max_chars={max_chars!r} must be >= 1")
    text = text.strip()
    if len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars + 1)
        text = text[:cut if cut > max_chars // 2 else max_chars].rstrip() + " [...]"
    return template.text.format(document=text)


def _last_score(pattern: re.Pattern, text: str) -> float | None:
    m = None
    for m in pattern.finditer(text):  # the last one wins: a judge may think aloud first
        pass
    if m is None:
        return None
    value, scale = float(m.group(1)), m.group(2)
    if scale is not None and int(scale) not in (0, SCORE_MAX):
        value = value * SCORE_MAX / int(scale)  # "8/10" is 4 on this scale
    return float(min(SCORE_MAX, max(SCORE_MIN, value)))


def parse_annotation(reply, template: AnnotationTemplate = ANNOTATION_TEMPLATE_V1) -> dict | None:
    """{"educational_value", "reasoning_depth" (floats in [0, 5]), "justification", "template_id",
    "template_version"} from a judge reply; None unless both scores are found.

    Tolerates case, markdown dressing, text around the lines, "4/5", "8/10" (rescaled), "4 out of
    5", "Educational value score (0-5): 4"; out-of-range values are clipped to [0, 5].
    """
    if not isinstance(reply, str):
        return None
    reply = reply[-_MAX_REPLY:]
    edu, reason = _last_score(_EDU, reply), _last_score(_REASON, reply)
    if edu is None or reason is None:
        return None
    why = [m.group(1).strip(" \t*_") for m in _WHY.finditer(reply)]
    return {"educational_value": edu, "reasoning_depth": reason, "justification": why[-1][:1000] if why else "",
            "template_id": template.id, "template_version": template.version}


def labels_from_annotations(annotations, threshold: float = 3) -> list[int | None]:
    """Binary labels for the classifier: 1 (keep) when educational value >= threshold, else 0 (drop).

    Threshold 3 is FineWeb-Edu's: "introduces key concepts coherently" and up. One label per
    annotation, in order; None where the annotation is missing or unparsed (parse_annotation gave
    None), which train_classifier counts as unlabelled and leaves out.
    """
    out: list[int | None] = []
    for a in annotations:
        v = a.get("educational_value") if isinstance(a, dict) else None
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        out.append(int(v >= threshold) if ok else None)
    return out


# --- the classifier ------------------------------------------------------------------------------
_FORMAT = "phi4ray-quality-classifier/2"  # /2: word and character families averaged separately
_CHUNK = 64  # documents featurised together: numpy passes amortised, memory bounded


class ClassifierFileError(ValueError):
    """A saved classifier that cannot be loaded; the message names the file."""


@dataclass(frozen=True)
class QualityClassifierConfig:
    buckets: int = 1 << 18          # hashed feature rows; a power of two (buckets take the top hash bits)
    dim: int = 16
    epochs: int = 5
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


# --- passages ------------------------------------------------------------------------------------
_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}(?:[ \t]|$)")
_SETEXT = re.compile(r"^[ \t]{0,3}(?:=+|-+)[ \t]*$")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def _blocks(text: str) -> list[tuple[str, str]]:
    """(kind, text) blocks: "atomic" (a closed code fence or $$ formula, never cut), "heading" or
    "para" (lines up to a blank line). An unclosed fence or $$ is read as ordinary text."""
    lines = text.split("\n")
    fences = [(i, m.group(1)) for i, ln in enumerate(lines) if (m := _FENCE.match(ln))]
    fence_at = [i for i, _ in fences]
    dollars = [i for i, ln in enumerate(lines) if ln.count("$$") % 2]
    out: list[tuple[str, str]] = []
    para: list[str] = []

    def end_para():
        if para:
            out.append(("para", "\n".join(para)))
            para.clear()

    i = 0
    while i < len(lines):
        line, close = lines[i], None
        if (m := _FENCE.match(line)) is not None:
            mark = m.group(1)
            # the closing fence: same character, at least as long, nothing after it
            for j, other in fences[bisect.bisect_right(fence_at, i):]:
                if other[0] == mark[0] and len(other) >= len(mark) and not lines[j].strip().strip(mark[0]):
                    close = j
                    break
        elif line.count("$$") % 2:
            k = bisect.bisect_right(dollars, i)
            close = dollars[k] if k < len(dollars) else None
        if close is not None:
            end_para()
            out.append(("atomic", "\n".join(lines[i:close + 1])))
            i = close + 1
            continue
        if not line.strip():
            end_para()
        elif _HEADING.match(line):
            end_para()
            out.append(("heading", line))
        elif para and len(para) == 1 and _SETEXT.match(line):  # "Title\n=====": the paragraph was a heading
            out.append(("heading", para.pop() + "\n" + line))
        else:
            para.append(line)
        i += 1
    end_para()
    return out


def _split_long(text: str, max_chars: int, first: int) -> list[str]:
    """A paragraph over max_chars, cut at sentence ends, else at a space, else (one giant token)
    anywhere; the pieces are refilled up to max_chars (the first up to `first`, leaving room for
    the heading before it)."""
    units: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        while len(sentence) > max_chars:
            cut = max(sentence.rfind(" ", 0, max_chars + 1), sentence.rfind("\n", 0, max_chars + 1))
            cut = cut if cut > 0 else max_chars
            units.append(sentence[:cut])
            sentence = sentence[cut:].lstrip()
        units.append(sentence)
    pieces: list[str] = []
    for unit in filter(str.strip, units):
        if pieces and len(pieces[-1]) + 1 + len(unit) <= (first if len(pieces) == 1 else max_chars):
            pieces[-1] += " " + unit
        else:
            pieces.append(unit)
    return pieces


def _pack(blocks: list[tuple[str, str]], max_chars: int, min_chars: int) -> list[str]:
    """Blocks into passages joined by blank lines: a new passage when the next block would pass
    max_chars, or at a heading once the current one has min_chars."""
    passages: list[list[tuple[str, str]]] = [[]]
    size = 0  # length of the current passage as joined
    for kind, block in blocks:
        cur = passages[-1]
        if cur and (size + 2 + len(block) > max_chars or (kind == "heading" and size >= min_chars)):
            # a heading stays with what it introduces, when the two fit together
            carry = len(cur) > 1 and cur[-1][0] == "heading" and len(cur[-1][1]) + 2 + len(block) <= max_chars
            passages.append([cur.pop()] if carry else [])
            size = len(passages[-1][0][1]) if carry else 0
        passages[-1].append((kind, block))
        size += len(block) + (2 if len(passages[-1]) > 1 else 0)
    return ["\n\n".join(b for _, b in p) for p in passages if p]


def segment_passages(text: str, max_chars: int = 2000, min_chars: int = 200) -> list[str]:
    """Passages of at most `max_chars` (a code block or formula longer than that stays whole, in a
    passage of its own), cut at paragraph and heading boundaries, each heading kept with what
    follows it; a passage under `min_chars` joins a neighbour when they fit together. Every
    non-whitespace character of `text` is in exactly one passage, in order; only whitespace between
    blocks changes (blocks are joined by one blank line)."""
    if not isinstance(text, str):
        raise TypeError(f"segment_passages needs a str, got {type(text).__name__}")
    if not 0 <= min_chars <= max_chars or max_chars < 1:
        raise ValueError(f"need 0 <= min_chars <= max_chars and max_chars >= 1, got {min_chars}, {max_chars}")
    blocks: list[tuple[str, str]] = []
    for kind, block in _blocks(text.replace("\r\n", "\n")):
        if kind != "atomic" and len(block) > max_chars:  # a heading line that long is a paragraph
            room = max_chars - 2 - len(blocks[-1][1]) if blocks and blocks[-1][0] == "heading" else max_chars
            blocks += [("para", piece) for piece in _split_long(block, max_chars, max(room, max_chars // 2))]
        else:
            blocks.append((kind, block))
    out: list[str] = []
    for p in _pack(blocks, max_chars, min_chars):
        if out and min(len(out[-1]), len(p)) < min_chars and len(out[-1]) + 2 + len(p) <= max_chars:
            out[-1] += "\n\n" + p
        else:
            out.append(p)
    return out


# Cheap surface cues, English first, with the common German / French / Spanish equivalents.
_NUMBER = re.compile(r"\d+(?:[.,:/-]\d+)*%?")
_YEAR_OR_DATE = re.compile(  # years 1000-2099 and month names ("may" left out: mostly the verb)
    r"\b(?:1\d{3}|20\d\d)\b|\b(?:january|february|march|april|june|july|august|september|october|november|"
    r"december|(?:jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec)\.|januar|februar|märz|mai|juni|juli|oktober|"
    r"dezember|janvier|février|mars|avril|juin|juillet|août|septembre|octobre|novembre|décembre|enero|"
    r"febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|octubre|noviembre|diciembre)(?!\w)", re.I)
_DEFINITION = re.compile(
    r"\b(?:is|are|was|were) (?:a|an|the) (?:\w+ ){0,3}(?:of|that|which|for|used)\b|\bis defined as\b|"
    r"\brefers? to\b|\b(?:also )?known as\b|\bis called\b|\bconsists? of\b|\bdenotes?\b|"
    r"\b(?:ist|sind) (?:ein|eine|der|die|das)\b|\bbezeichnet\b|\bversteht man\b|"
    r"\b(?:est|sont) (?:un|une|le|la|les)\b|\bdésigne\b|\bse définit\b|"
    r"\b(?:es|son) (?:un|una|el|la|los|las)\b|\bse define\b|\bse denomina\b", re.I)
_CONNECTIVE = re.compile(
    r"\b(?:therefore|thus|hence|because|since|consequently|so that|it follows|which means|implies|"
    r"suppose|assume|let|if|then|otherwise|we (?:get|obtain|have|conclude|see)|as a result|"
    r"daher|deshalb|folglich|weil|angenommen|somit|daraus folgt|wenn|dann|"
    r"donc|parce que|ainsi|par conséquent|supposons|si|alors|"
    r"por lo tanto|porque|entonces|supongamos|así que|por consiguiente|si)\b|[⇒∴→]|=>", re.I)
_EQUATION = re.compile(r"[^=<>!\s]\s*(?:=|≤|≥|≠|≈)\s*[^=\s]|\\(?:frac|sum|int|sqrt|cdot|times)\b|\$[^$\n]+\$")
_STEP = re.compile(r"^[ \t]*(?:step \d+|schritt \d+|étape \d+|paso \d+|\d+[.)][ \t]|[-*•][ \t]|"
                   r"first(?:ly)?\b|second(?:ly)?\b|next\b|finally\b|zuerst\b|dann\b|schließlich\b|"
                   r"d'abord\b|ensuite\b|enfin\b|primero\b|luego\b|finalmente\b)", re.I | re.M)
_SENTENCE = re.compile(r"[.!?。！？]+(?:\s|$)|\n\s*\n")


def _sat(x: float, half: float) -> float:
    """0 at 0, 1/2 at `half`, towards 1 beyond: densities map to [0, 1) without a hard cap."""
    return x / (x + half) if x > 0 else 0.0


def passage_scores(passages) -> list[dict]:
    """Heuristic {"factual", "reasoning" in [0, 1], "words"} for each passage.

    factual: density of numbers (per word), of years / month names and of capitalised words not
    starting a sentence (a stand-in for named entities), and definitional phrases per sentence
    ("X is a .. of", "refers to", "known as", German/French/Spanish "ist ein", "désigne", "se define").
    reasoning: causal and deductive connectives per sentence ("therefore", "because", "hence", "it
    follows", "suppose", "if .. then" and the German/French/Spanish equivalents), equations and
    LaTeX per sentence, and stepwise structure (numbered / "Step n" / "First .. Finally" lines).
    Limits: surface cues only; no truth, no coherence. Capitalised nouns make German look more
    factual; scripts without case or spaces get no entity or per-word signal; the word lists cover
    four languages. Calibrate against annotations, or replace with a trained classifier.
    """
    out = []
    for text in passages:
        if not isinstance(text, str) or not text.strip():
            out.append({"factual": 0.0, "reasoning": 0.0, "words": 0})
            continue
        toks = text.split()
        n_words = len(toks)
        n_sent = max(1, len(_SENTENCE.findall(text)))
        lines = max(1, sum(1 for ln in text.split("\n") if ln.strip()))
        numbers = len(_NUMBER.findall(text)) + len(_YEAR_OR_DATE.findall(text))
        entities = sum(1 for prev, tok in zip(toks, toks[1:])
                       if tok[:1].isupper() and not prev.endswith((".", "!", "?", ":")) and tok[1:2].islower())
        factual = (0.4 * _sat(numbers / n_words, 0.05) + 0.35 * _sat(entities / n_words, 0.06)
                   + 0.25 * _sat(len(_DEFINITION.findall(text)) / n_sent, 0.25))
        reasoning = (0.5 * _sat(len(_CONNECTIVE.findall(text)) / n_sent, 0.5)
                     + 0.3 * _sat(len(_EQUATION.findall(text)) / n_sent, 0.5)
                     + 0.2 * _sat(len(_STEP.findall(text)) / lines, 0.3))
        out.append({"factual": round(min(1.0, factual), 4), "reasoning": round(min(1.0, reasoning), 4),
                    "words": n_words})
    return out
