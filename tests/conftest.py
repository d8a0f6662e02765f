"""Session-wide fixtures: one tiny exported model, one vLLM engine, shared by every test."""
from __future__ import annotations

import os

import pytest
import torch

from phi4ray.model.config import model_preset
from phi4ray.model.decoder import build_model
from phi4ray.model.hf import export_hf
from phi4ray.model.phi4_tokenizer import phi4_tokenizer

pytest_plugins = ["tests.guard"]  # marks checked against what each test starts; Ray-free tests first

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
    return export_hf(tiny_model, tmp_path_factory.mktemp("tiny_hf"), phi4_tokenizer())


@pytest.fixture(scope="session")
def hf_tokenizer(tiny_export):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_export)


@pytest.fixture(scope="module")
def vllm_engine(tiny_export):
    """The real vLLM engine (vllm-cpu here) on the exported folder, started once."""
    from vllm import LLM

    llm = LLM(str(tiny_export), dtype="float32", enforce_eager=True, max_model_len=1024,
              enable_prefix_caching=True, seed=0)
    yield llm
    # stop the engine process now, so its shutdown logs come before pytest's summary line
    llm.llm_engine.engine_core.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session. Logical CPUs exceed the 2 real cores: vLLM
    replicas and the OpenAI ingress each reserve a CPU but mostly wait."""
    import ray
    from ray import serve

    if ray.is_initialized():  # building a Serve app object starts a default Ray on its own
        ray.shutdown()
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield {"http": f"http://127.0.0.1:{port}"}
    serve.shutdown()
    ray.shutdown()


TEST_API_KEY = "phi4ray-test-key-0123456789"


@pytest.fixture(scope="session")
def sampler_app(ray_cluster, tiny_export):
    """The sampler fleet on the tiny export: 1..2 replicas, API key on HTTP."""
    from ray import serve

    from actors.serve.app import build_sampler_app, sampler_deployment_name, sampler_llm_config
    from actors.serve.names import APP_NAME

    os.environ["PHI4RAY_TEST_API_KEY"] = TEST_API_KEY
    cfg = sampler_llm_config(str(tiny_export), max_model_len=512, min_replicas=1, max_replicas=2,
                             target_ongoing_requests=2, upscale_delay_s=1.0, downscale_delay_s=8.0)
    serve.run(build_sampler_app(cfg, api_key_env="PHI4RAY_TEST_API_KEY"), name=APP_NAME, route_prefix="/")
    deployment = sampler_deployment_name(cfg)
    yield {"url": ray_cluster["http"], "key": TEST_API_KEY, "app": APP_NAME, "deployment": deployment,
           "handle": serve.get_deployment_handle(deployment, APP_NAME), "model_id": cfg.model_id,
           "folder": str(tiny_export)}  # what it serves; a test that refreshes the weights puts these back
    serve.delete(APP_NAME)
