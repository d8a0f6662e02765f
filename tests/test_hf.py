import json

import pytest
import torch

from phi4ray.model.config import model_preset
from phi4ray.model.decoder import build_model
from phi4ray.model.hf import CheckpointError, export_hf, import_hf
from phi4ray.model.phi4_tokenizer import phi4_tokenizer


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("tied", [False, True])
def test_transformers_phi3_gives_our_logits(tmp_path, tied):
    from transformers import Phi3ForCausalLM

    cfg = model_preset("tiny").replace(n_layers=2, tie_embeddings=tied)
    model = build_model(cfg, seed=3).eval()
    export_hf(model, tmp_path, phi4_tokenizer())
    theirs = Phi3ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 48))
    with torch.no_grad():
        diff = (model(x) - theirs(x).logits).abs().max().item()
    assert diff <= 1e-4


def test_import_of_export_is_bit_identical(tiny_model, tiny_export):
    assert _same_state(tiny_model, import_hf(tiny_export))
    assert json.loads((tiny_export / "config.json").read_text())["architectures"] == ["Phi3ForCausalLM"]
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"):
        assert (tiny_export / f).is_file()


def test_sharded_export_round_trips(tiny_model, tmp_path):
    export_hf(tiny_model, tmp_path, phi4_tokenizer(), max_shard_bytes=8 * 2**20)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert _same_state(tiny_model, import_hf(tmp_path))


def test_bf16_export_keeps_bf16(tiny_model, tmp_path):
    export_hf(tiny_model, tmp_path, phi4_tokenizer(), dtype=torch.bfloat16)
    back = import_hf(tmp_path)
    assert back.tok_embeddings.weight.dtype == torch.bfloat16
    assert torch.equal(back.norm.weight, tiny_model.norm.weight.bfloat16())


@pytest.fixture
def export_copy(tiny_model, tmp_path):
    return export_hf(tiny_model, tmp_path / "m", phi4_tokenizer())


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="model folder not found"):
        import_hf(tmp_path / "nope")


def test_missing_config(export_copy):
    (export_copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: file not found"):
        import_hf(export_copy)


def test_malformed_config(export_copy):
    (export_copy / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: malformed JSON"):
        import_hf(export_copy)


def test_inconsistent_heads_in_config(export_copy):
    cfg = json.loads((export_copy / "config.json").read_text())
    cfg["num_attention_heads"] = 3
    (export_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json.*n_heads=3"):
        import_hf(export_copy)


@pytest.mark.parametrize("model_type, arch, match", [
    ("gpt2", "GPT2LMHeadModel", "model_type='gpt2'.*does not map"),
    # a Llama config over Phi-3's fused tensors: Llama's separate q/k/v are what is missing
    ("llama", "LlamaForCausalLM", "missing tensors.*q_proj"),
])
def test_wrong_or_mislabelled_architecture(export_copy, model_type, arch, match):
    cfg = json.loads((export_copy / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = model_type, [arch]
    (export_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=match):
        import_hf(export_copy)


def test_missing_weights_file(export_copy):
    (export_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: weights file not found"):
        import_hf(export_copy)


def test_truncated_weights_file(export_copy):
    p = export_copy / "model.safetensors"
    p.write_bytes(p.read_bytes()[: 1000])
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable"):
        import_hf(export_copy)


def test_shape_mismatch_names_the_tensor(export_copy):
    cfg = json.loads((export_copy / "config.json").read_text())
    cfg["intermediate_size"] += 2
    (export_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="gate_up_proj.weight has shape"):
        import_hf(export_copy)


def test_missing_tensor_is_named(export_copy):
    cfg = json.loads((export_copy / "config.json").read_text())
    cfg["num_hidden_layers"] += 1
    (export_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing tensors.*model.layers.2"):
        import_hf(export_copy)
