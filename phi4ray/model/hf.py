"""Export to and import from the HF `Phi3ForCausalLM` layout (what transformers and vLLM load).

The layout is Phi-4's own: config.json, model.safetensors (or shards + index), generation_config.json
and the tokenizer files. Our model keeps q/k/v and gate/up as separate matrices (clean FSDP and
readable code); HF fuses them as `qkv_proj` = [q; k; v] and `gate_up_proj` = [gate; up] along the
output dimension (`hf_layout`), so export writes the parts one after another and import reads
each part's rows: bit-exact both ways. Both stream (phi4ray.model.safetensors_io): an export never
builds a state dict, an import reads into the model's own (possibly FSDP-sharded) parameters.
"""
from __future__ import annotations

import collections
import contextlib
import json
import math
import os
from importlib.metadata import version
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from phi4ray.model.config import ModelConfig
from phi4ray.model.decoder import Phi4
from phi4ray.model.safetensors_io import CheckpointError, Entry, Writer, read_header, read_rows
from phi4ray.model.tokenizer_base import Tokenizer
from phi4ray.run.errors import ConfigError

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hf_config(cfg: ModelConfig, tok: Tokenizer, dtype: torch.dtype = torch.float32) -> dict:
    return {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "hidden_act": "silu",
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "partial_rotary_factor": 1.0,
        "max_position_embeddings": cfg.max_seq_len,
        "original_max_position_embeddings": cfg.max_seq_len,
        "sliding_window": None,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.end_turn_id,
        "pad_token_id": tok.pad_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
        # what HF's save_pretrained writes too. Without it, transformers >= 5 takes a local folder
        # for an old Mistral export and warns of an "incorrect regex pattern" on every load
        "transformers_version": version("transformers"),
    }


# the HF families that map onto our decoder: Phi-3's fused layout (Phi-4's own) and Llama's separate
# q/k/v and gate/up (Llama, SmolLM, Mistral without sliding windows): same math, other tensor names
FAMILIES = {"phi3": "Phi3ForCausalLM", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}


def family(hf: dict, where: str = "config.json") -> str:
    arch = hf.get("architectures") or []
    for name, cls in FAMILIES.items():
        if hf.get("model_type") == name or cls in arch:
            return name
    raise CheckpointError(
        f"{where}: model_type={hf.get('model_type')!r}, architectures={arch!r} does not map onto the Phi-4 "
        f"decoder; phi4ray imports {', '.join(FAMILIES.values())}")


def _rope_theta(hf: dict, where: str) -> float:
    rope = hf.get("rope_parameters") or {}  # transformers 5 moves the base here
    scaling = hf.get("rope_scaling") or ({k: v for k, v in rope.items() if k != "rope_theta"} or None)
    if scaling and (scaling.get("rope_type") or scaling.get("type")) not in ("default", None):
        raise CheckpointError(f"{where}: rope scaling {scaling!r} is not supported (phi4ray uses plain RoPE)")
    return float(hf.get("rope_theta") or rope.get("rope_theta") or 10_000.0)


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    fam = family(hf, where)
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError(f"{where}: partial_rotary_factor={hf['partial_rotary_factor']} is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{where}: hidden_act={hf['hidden_act']!r}; the decoder's MLP is SwiGLU (silu)")
    for bias in ("attention_bias", "mlp_bias"):
        if hf.get(bias):
            raise CheckpointError(f"{where}: {bias}=true; the decoder's projections have no bias")
    if fam == "mistral" and hf.get("sliding_window"):
        raise CheckpointError(f"{where}: sliding_window={hf['sliding_window']}; the decoder attends to the whole context")
    fields = {
        "dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
        "ffn_dim": "intermediate_size", "vocab_size": "vocab_size", "max_seq_len": "max_position_embeddings",
    }
    kwargs = {}
    for ours, theirs in fields.items():
        if theirs not in hf:
            raise CheckpointError(f"{where}: missing field {theirs!r}")
        kwargs[ours] = hf[theirs]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // hf["num_attention_heads"]):
        raise CheckpointError(f"{where}: head_dim={hf['head_dim']} is not hidden_size / num_attention_heads")
    kwargs["n_kv_heads"] = hf.get("num_key_value_heads") or hf["num_attention_heads"]
    # 7 significant digits: GGUF stores eps as fp32, so 1e-5 comes back as 9.99999974e-06, which
    # would differ from every config that says 1e-5 (the two give the same logits to ~1e-8)
    kwargs["norm_eps"] = float(f"{float(hf.get('rms_norm_eps', 1e-5)):.7g}")
    kwargs["rope_theta"] = _rope_theta(hf, where)
    kwargs["tie_embeddings"] = bool(hf.get("tie_word_embeddings", False))
    kwargs["init_std"] = float(hf.get("initializer_range", 0.02))
    try:
        return ModelConfig(**kwargs)
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None


class HFTensor(NamedTuple):
    parts: tuple[tuple[str, int], ...]  # our parameters stacked along dim 0, with their row counts
    cols: tuple[int, ...]               # the dims after the first

    @property
    def shape(self) -> tuple[int, ...]:
        return (sum(rows for _, rows in self.parts), *self.cols)


def hf_layout(cfg: ModelConfig) -> dict[str, HFTensor]:
    """Every HF tensor, in export order, as the rows of our parameters it stacks."""
    q, kv, f = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.ffn_dim

    def one(name: str, rows: int, *cols: int) -> HFTensor:
        return HFTensor(((name, rows),), cols)

    out = {"model.embed_tokens.weight": one("tok_embeddings.weight", cfg.vocab_size, cfg.dim)}
    for i in range(cfg.n_layers):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        out |= {
            p + "self_attn.qkv_proj.weight": HFTensor(
                ((o + "attn.wq.weight", q), (o + "attn.wk.weight", kv), (o + "attn.wv.weight", kv)), (cfg.dim,)),
            p + "self_attn.o_proj.weight": one(o + "attn.wo.weight", cfg.dim, q),
            p + "mlp.gate_up_proj.weight": HFTensor(((o + "ffn.w_gate.weight", f), (o + "ffn.w_up.weight", f)), (cfg.dim,)),
            p + "mlp.down_proj.weight": one(o + "ffn.w_down.weight", cfg.dim, f),
            p + "input_layernorm.weight": one(o + "attn_norm.weight", cfg.dim),
            p + "post_attention_layernorm.weight": one(o + "ffn_norm.weight", cfg.dim),
        }
    out["model.norm.weight"] = one("norm.weight", cfg.dim)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = one("output.weight", cfg.vocab_size, cfg.dim)
    return out


def source_layout(cfg: ModelConfig, fam: str) -> dict[str, HFTensor]:
    """A folder's tensors as the rows of our parameters they hold: Phi-3's fused layout, or one
    tensor per parameter under Llama's names."""
    if fam == "phi3":
        return hf_layout(cfg)
    names = {"attn.wq": "self_attn.q_proj", "attn.wk": "self_attn.k_proj", "attn.wv": "self_attn.v_proj",
             "attn.wo": "self_attn.o_proj", "ffn.w_gate": "mlp.gate_proj", "ffn.w_up": "mlp.up_proj",
             "ffn.w_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    out = {}
    for t in hf_layout(cfg).values():
        for (name, rows), cols in ((part, t.cols) for part in t.parts):
            if name.startswith("layers."):
                i, rest = name.split(".")[1], name.split(".", 2)[2].removesuffix(".weight")
                theirs = f"model.layers.{i}.{names[rest]}.weight"
            else:
                theirs = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
                          "output.weight": "lm_head.weight"}[name]
            out[theirs] = HFTensor(((name, rows),), cols)
    return out


def _parameters(model: Phi4, layout: dict[str, HFTensor]) -> dict[str, torch.Tensor]:
    # activation checkpointing wraps each block; inside the wrapper the names are ours
    params = {n.replace("_checkpoint_wrapped_module.", ""): p for n, p in model.named_parameters()}
    ours = {name for t in layout.values() for name, _ in t.parts}
    if set(params) != ours:
        raise ValueError(f"model parameters do not match its config: extra {sorted(set(params) - ours)[:5]}, "
                         f"missing {sorted(ours - set(params))[:5]}")
    return params


def _local_rows(name: str, p: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """This rank's part of parameter `p`: (its local tensor, first row, end row)."""
    if not isinstance(p, DTensor):
        return p, 0, p.shape[0]
    (chunk,) = p.__create_chunk_list__()  # the shard's offsets and sizes, as DCP reads them
    if any(chunk.offsets[1:]) or tuple(chunk.sizes[1:]) != tuple(p.shape[1:]):
        raise NotImplementedError(f"{name}: placements {p.placements} shard a dim other than 0; "
                                  "only row-sharded (FSDP) parameters load by rows")
    return p.to_local(), chunk.offsets[0], chunk.offsets[0] + chunk.sizes[0]


def _shard_files(layout: dict[str, HFTensor], itemsize: int, max_shard_bytes: int) -> dict[str, list[str]]:
    """file name -> the HF tensors it holds, filled in export order up to max_shard_bytes each."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in layout.items():
        nbytes = itemsize * math.prod(t.shape)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    if len(shards) == 1:
        return {"model.safetensors": shards[0]}
    return {f"model-{i:05d}-of-{len(shards):05d}.safetensors": s for i, s in enumerate(shards, 1)}


@torch.no_grad()
def export_hf(model: Phi4, out_dir: str | os.PathLike, tokenizer: Tokenizer, dtype: torch.dtype | None = None,
              max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write `model` and its `tokenizer` as a Phi3ForCausalLM folder, one tensor at a time.

    A plain model is written by the process that calls this. An FSDP2-sharded one needs every rank
    to call it: each parameter is gathered in turn (DTensor.full_tensor) and rank 0 writes it, so
    beyond its shard a rank only ever holds the gather of one parameter; every rank returns once
    the folder is complete."""
    out = Path(out_dir)
    params = _parameters(model, hf_layout(model.cfg))
    dtype = dtype or params["tok_embeddings.weight"].dtype
    sharded = any(isinstance(p, DTensor) for p in params.values())
    write_folder(model.cfg, tokenizer, out, dtype,
                 lambda name: params[name].full_tensor() if isinstance(params[name], DTensor) else params[name],
                 max_shard_bytes, writing=not sharded or dist.get_rank() == 0)
    if sharded:
        dist.barrier()
    return out


def write_folder(cfg: ModelConfig, tok: Tokenizer, out: Path, dtype: torch.dtype, tensor: Callable[[str], torch.Tensor],
                 max_shard_bytes: int = 5 * 2**30, writing: bool = True) -> None:
    """The Phi3ForCausalLM folder of a model given as `tensor(our parameter name)`, asked for one at
    a time in file order (export gathers each from the shards, import reads each from the source).
    With `writing` False this rank only takes part in the gathers."""
    layout = hf_layout(cfg)
    files = _shard_files(layout, dtype.itemsize, max_shard_bytes)
    if writing:
        out.mkdir(parents=True, exist_ok=True)
    for fname, names in files.items():
        shapes = {n: layout[n].shape for n in names}
        with Writer(out / fname, shapes, dtype, {"format": "pt"}) if writing else contextlib.nullcontext() as w:
            for name in sorted(names):  # the file's data order (Writer.names) on every rank
                pieces = (tensor(part) for part, _ in layout[name].parts)
                if w is None:
                    collections.deque(pieces, maxlen=0)  # the gathers are collectives: take part, drop the result
                else:
                    w.write(name, pieces)
    if writing:
        _write_metadata(cfg, tok, out, files, layout, dtype)


def _write_metadata(cfg: ModelConfig, tok: Tokenizer, out: Path, files: dict[str, list[str]],
                    layout: dict[str, HFTensor], dtype: torch.dtype) -> None:
    if len(files) > 1:
        total = sum(dtype.itemsize * math.prod(t.shape) for t in layout.values())
        weight_map = {name: fname for fname, names in files.items() for name in names}
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(hf_config(cfg, tok, dtype), indent=2))
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": tok.bos_id,
        "eos_token_id": sorted({tok.end_turn_id, tok.eos_id}),
        "pad_token_id": tok.pad_id,
    }, indent=2))
    tok.save_hf(out)


def check_vocab(cfg: ModelConfig, tok: Tokenizer, where: str) -> None:
    """Every id the tokenizer makes must have a row in the model's embedding (a model may have more
    rows than its tokenizer ids, padded for the matmuls, never fewer)."""
    if tok.vocab_size > cfg.vocab_size:
        raise ConfigError(f"{where}: the tokenizer makes ids up to {tok.vocab_size - 1}, but the model's "
                          f"vocab_size is {cfg.vocab_size}: tokenizer and model do not belong together")


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: malformed JSON ({e})") from None


def folder_config(model_dir: str | os.PathLike) -> tuple[dict, ModelConfig]:
    """A model folder's config.json, as read and as our config."""
    d = Path(model_dir)
    if not d.is_dir():
        raise CheckpointError(f"{d}: model folder not found")
    hf = read_json(d / "config.json")
    return hf, config_from_hf(hf, where=str(d / "config.json"))


def folder_weights(d: Path, layout: dict[str, HFTensor]) -> dict[str, Entry]:
    """The folder's tensors (headers only), checked against the layout by name and shape."""
    index = d / "model.safetensors.index.json"
    files = (sorted(set(read_json(index)["weight_map"].values())) if index.exists()
             else ["model.safetensors"])
    tensors: dict[str, Entry] = {}
    for fname in files:
        tensors |= read_header(d / fname)
    missing = sorted(set(layout) - set(tensors))
    if missing:
        raise CheckpointError(f"{d}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for name, t in layout.items():
        if tensors[name].shape != t.shape:
            raise CheckpointError(f"{d}: tensor {name} has shape {tensors[name].shape}, config says {t.shape}")
    return tensors


@torch.no_grad()
def load_hf_weights(model: Phi4, model_dir: str | os.PathLike) -> None:
    """Fill `model`'s parameters (allocated, plain or FSDP2-sharded) from a folder of a mapped
    family whose tensors fit model.cfg. Each rank reads only the rows it holds, by plain file
    reads, in the parameters' own dtype: beyond its shard a rank holds at most one converted row block."""
    d = Path(model_dir)
    layout = source_layout(model.cfg, family(read_json(d / "config.json"), str(d / "config.json")))
    tensors = folder_weights(d, layout)
    params = _parameters(model, hf_layout(model.cfg))
    for hf_name, t in layout.items():
        row0 = 0
        for name, rows in t.parts:
            local, start, stop = _local_rows(name, params[name])
            if stop > start:
                read_rows(tensors[hf_name], row0 + start, row0 + stop, local)
            row0 += rows


def import_hf(model_dir: str | os.PathLike, device: str | torch.device = "cpu",
              dtype: torch.dtype | None = None) -> Phi4:
    """Load a Phi3ForCausalLM folder (ours or any Phi-4-shaped one) into our model."""
    d = Path(model_dir)
    hf, cfg = folder_config(d)
    if dtype is None:
        dtype = TORCH_DTYPES.get(str(hf.get("torch_dtype", "float32")), torch.float32)
    with torch.device("meta"):
        model = Phi4(cfg).to(dtype)
    model.to_empty(device=device)
    load_hf_weights(model, d)
    return model.eval()
