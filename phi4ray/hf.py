"""Export to and import from the HF `Phi3ForCausalLM` layout (what transformers and vLLM load).

The layout is Phi-4's own: config.json, model.safetensors (or shards + index), generation_config.json
and the tokenizer files. Our model keeps q/k/v and gate/up as separate matrices (clean FSDP and
readable code); HF fuses them as `qkv_proj` = [q; k; v] and `gate_up_proj` = [gate; up] along the
output dimension, so export is a concat and import a split: bit-exact both ways.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from phi4ray import tokenizer as tok
from phi4ray.config import ConfigError, ModelConfig
from phi4ray.model import Phi4

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(ValueError):
    """A model folder that cannot be loaded; the message names the file and what is wrong."""


def hf_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
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
        "bos_token_id": tok.ENDOFTEXT,
        "eos_token_id": tok.IM_END,
        "pad_token_id": tok.PAD,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    arch = hf.get("architectures") or []
    if hf.get("model_type") != "phi3" and "Phi3ForCausalLM" not in arch:
        raise CheckpointError(
            f"{where}: model_type={hf.get('model_type')!r}, architectures={arch!r}; phi4ray loads the "
            "Phi3ForCausalLM layout (Phi-4's)"
        )
    if hf.get("rope_scaling"):
        raise CheckpointError(f"{where}: rope_scaling={hf['rope_scaling']!r} is not supported (Phi-4 uses plain RoPE)")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError(f"{where}: partial_rotary_factor={hf['partial_rotary_factor']} is not supported")
    fields = {
        "dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
        "ffn_dim": "intermediate_size", "vocab_size": "vocab_size", "max_seq_len": "max_position_embeddings",
    }
    kwargs = {}
    for ours, theirs in fields.items():
        if theirs not in hf:
            raise CheckpointError(f"{where}: missing field {theirs!r}")
        kwargs[ours] = hf[theirs]
    kwargs["n_kv_heads"] = hf.get("num_key_value_heads") or hf["num_attention_heads"]
    kwargs["norm_eps"] = float(hf.get("rms_norm_eps", 1e-5))
    kwargs["rope_theta"] = float(hf.get("rope_theta", 10_000.0))
    kwargs["tie_embeddings"] = bool(hf.get("tie_word_embeddings", False))
    kwargs["init_std"] = float(hf.get("initializer_range", 0.02))
    try:
        return ModelConfig(**kwargs)
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None


def to_hf_state_dict(model: Phi4) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": model.tok_embeddings.weight}
    for i, b in model.layers.items():
        p = f"model.layers.{i}."
        sd[p + "self_attn.qkv_proj.weight"] = torch.cat([b.attn.wq.weight, b.attn.wk.weight, b.attn.wv.weight])
        sd[p + "self_attn.o_proj.weight"] = b.attn.wo.weight
        sd[p + "mlp.gate_up_proj.weight"] = torch.cat([b.ffn.w_gate.weight, b.ffn.w_up.weight])
        sd[p + "mlp.down_proj.weight"] = b.ffn.w_down.weight
        sd[p + "input_layernorm.weight"] = b.attn_norm.weight
        sd[p + "post_attention_layernorm.weight"] = b.ffn_norm.weight
    sd["model.norm.weight"] = model.norm.weight
    if model.output is not None:
        sd["lm_head.weight"] = model.output.weight
    return {k: v.detach().contiguous() for k, v in sd.items()}


def from_hf_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor], where: str = "checkpoint") -> dict:
    """HF tensors -> our state_dict, checking every name and shape."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    expected = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.dim), "model.norm.weight": (cfg.dim,)}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        expected |= {
            p + "self_attn.qkv_proj.weight": (q + 2 * kv, cfg.dim),
            p + "self_attn.o_proj.weight": (cfg.dim, q),
            p + "mlp.gate_up_proj.weight": (2 * cfg.ffn_dim, cfg.dim),
            p + "mlp.down_proj.weight": (cfg.dim, cfg.ffn_dim),
            p + "input_layernorm.weight": (cfg.dim,),
            p + "post_attention_layernorm.weight": (cfg.dim,),
        }
    if not cfg.tie_embeddings:
        expected["lm_head.weight"] = (cfg.vocab_size, cfg.dim)
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise CheckpointError(f"{where}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for name, shape in expected.items():
        if tuple(sd[name].shape) != shape:
            raise CheckpointError(f"{where}: tensor {name} has shape {tuple(sd[name].shape)}, config says {shape}")
    out = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    for i in range(cfg.n_layers):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        wq, wk, wv = sd[p + "self_attn.qkv_proj.weight"].split([q, kv, kv])
        gate, up = sd[p + "mlp.gate_up_proj.weight"].split([cfg.ffn_dim, cfg.ffn_dim])
        out |= {
            o + "attn.wq.weight": wq, o + "attn.wk.weight": wk, o + "attn.wv.weight": wv,
            o + "attn.wo.weight": sd[p + "self_attn.o_proj.weight"],
            o + "ffn.w_gate.weight": gate, o + "ffn.w_up.weight": up,
            o + "ffn.w_down.weight": sd[p + "mlp.down_proj.weight"],
            o + "attn_norm.weight": sd[p + "input_layernorm.weight"],
            o + "ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
        }
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def export_hf(model: Phi4, out_dir: str | os.PathLike, dtype: torch.dtype | None = None,
              max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write `model` (and the Phi-4 tokenizer) as a Phi3ForCausalLM folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = dtype or model.tok_embeddings.weight.dtype
    sd = {k: v.to("cpu", dtype) for k, v in to_hf_state_dict(model).items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in sd.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], out / "model.safetensors", metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, out / fname, metadata=meta)
            weight_map |= {k: fname for k in shard}
        total = sum(t.numel() * t.element_size() for t in sd.values())
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(hf_config(model.cfg, dtype), indent=2))
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": tok.ENDOFTEXT,
        "eos_token_id": [tok.IM_END, tok.ENDOFTEXT],
        "pad_token_id": tok.PAD,
    }, indent=2))
    tok.get_tokenizer().save_hf(out)
    return out


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: malformed JSON ({e})") from None


def load_hf_state_dict(model_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    d = Path(model_dir)
    index = d / "model.safetensors.index.json"
    files = (sorted(set(_read_json(index)["weight_map"].values())) if index.exists()
             else ["model.safetensors"])
    sd: dict[str, torch.Tensor] = {}
    for fname in files:
        path = d / fname
        if not path.is_file():
            raise CheckpointError(f"{path}: weights file not found")
        try:
            sd |= load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None
    return sd


def import_hf(model_dir: str | os.PathLike, device: str | torch.device = "cpu",
              dtype: torch.dtype | None = None) -> Phi4:
    """Load a Phi3ForCausalLM folder (ours or any Phi-4-shaped one) into our model."""
    d = Path(model_dir)
    if not d.is_dir():
        raise CheckpointError(f"{d}: model folder not found")
    hf = _read_json(d / "config.json")
    cfg = config_from_hf(hf, where=str(d / "config.json"))
    sd = from_hf_state_dict(cfg, load_hf_state_dict(d), where=str(d))
    if dtype is None:
        dtype = TORCH_DTYPES.get(str(hf.get("torch_dtype", "float32")), torch.float32)
    with torch.device("meta"):
        model = Phi4(cfg)
    model.load_state_dict({k: v.to(device, dtype) for k, v in sd.items()}, assign=True)
    return model.eval()
