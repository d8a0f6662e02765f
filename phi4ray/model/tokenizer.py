"""How a run finds its tokenizer: from the model folder.

Two kinds fill the interface (phi4ray.model.tokenizer_base): the Phi-4 tokenizer
(phi4ray.model.phi4_tokenizer, tiktoken; the default for pretraining from scratch) and an imported
model's own (phi4ray.model.hf_tokenizer, its tokenizer.json and chat template). A model folder
written by phi4ray holds the files of one of them; `load_tokenizer(folder)` reads them back. Token
ids are the unit between stages: a stage encodes once with the folder's tokenizer and hands ids
on, never decoded-and-re-encoded text.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from phi4ray.model.hf_tokenizer import HFTokenizer
from phi4ray.model.phi4_tokenizer import phi4_tokenizer
from phi4ray.model.tokenizer_base import CHAT_ROLES, KIND_KEY, ChatTokens, Tokenizer
from phi4ray.run.errors import ConfigError

__all__ = ["CHAT_ROLES", "ChatTokens", "Tokenizer", "load_tokenizer", "tokenizer_for"]


def tokenizer_for(model_dir: str | os.PathLike | None) -> Tokenizer:
    """`load_tokenizer(model_dir)`, or the Phi-4 tokenizer where no model folder is named (library
    callers pretraining from scratch, the data tests)."""
    return load_tokenizer(model_dir) if model_dir else phi4_tokenizer()


def load_tokenizer(model_dir: str | os.PathLike) -> Tokenizer:
    """The tokenizer a model folder carries (written by phi4ray's export or import).

    Cached per folder and file stamp, so the stages and actors that ask again for the same model's
    tokenizer share one (a Phi-4 tokenizer takes about a second to build)."""
    d = Path(model_dir)
    config = d / "tokenizer_config.json"
    if not config.is_file():
        raise ConfigError(f"{d}: no tokenizer_config.json (not a model folder written by phi4ray export or import)")
    st = config.stat()
    return _load(str(d.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _load(folder: str, mtime_ns: int, size: int) -> Tokenizer:
    try:
        kind = json.loads((Path(folder) / "tokenizer_config.json").read_text()).get(KIND_KEY, "hf")
    except json.JSONDecodeError as e:
        raise ConfigError(f"{folder}/tokenizer_config.json: malformed JSON ({e})") from None
    if kind == "phi4":
        return phi4_tokenizer()
    return HFTokenizer(folder)
