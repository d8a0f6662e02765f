"""The synthesis teacher: the run's own model on the sampler fleet (`synth.teacher=fleet`) or an
external OpenAI-compatible endpoint (`synth.teacher=endpoint`). Its name goes into every chunk id,
so another teacher never reuses a chunk another one wrote."""
from __future__ import annotations

from pathlib import Path

from phi4ray.data.synth.llm import EndpointEngine
from phi4ray.run.paths import check_model_dir, latest_model


def teacher_model(run_dir: Path, cfg) -> Path:
    """The HF folder the fleet serves as teacher: `synth.teacher_model`, else the run's newest model."""
    s = cfg.synth
    return check_model_dir(s.teacher_model, "synth.teacher_model") if s.teacher_model else \
        latest_model(run_dir).resolve()


def teacher_name(run_dir: Path, cfg) -> str:
    s = cfg.synth
    return f"{s.teacher_url}#{s.teacher_name}" if s.teacher == "endpoint" else str(teacher_model(run_dir, cfg))


def check_teacher(cfg, run_dir: Path, options: dict) -> None:
    """Before anything starts: a fleet teacher needs a model folder (MissingInput otherwise)."""
    if cfg.synth.teacher == "fleet":
        teacher_model(run_dir, cfg)


def endpoint_spec(cfg) -> dict:
    """A picklable description of the endpoint teacher, for `endpoint_engine` in each worker."""
    s = cfg.synth
    return {"kind": "endpoint", "url": s.teacher_url, "name": s.teacher_name, "mode": s.teacher_mode,
            "api_key_env": s.teacher_api_key_env, "concurrency": s.call.concurrency * s.call.batch_size}


def endpoint_engine(spec: dict):
    """The endpoint teacher's engine from `endpoint_spec`."""
    from phi4ray.serve.endpoint import EndpointConfig, OpenAIEndpoint  # deferred: httpx loads only for an endpoint teacher

    endpoint = OpenAIEndpoint(EndpointConfig(spec["url"], spec["name"], api_key_env=spec["api_key_env"],
                                             max_concurrency=spec["concurrency"]))
    return EndpointEngine(endpoint, mode=spec["mode"])
