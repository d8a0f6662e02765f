"""The sampler fleet of a run: the Serve apps it deployed, as typed records, and their lifetimes.

Stages ask the fleet for an app serving some model folders (`start`), swap another checkpoint of
the same shape into a running app (`swap`), and hand it back (`release`). Inside a pipeline run a
stage may leave its app up (`keep=True`) and a later stage asking for the same model ids on
engines of the same shape gets it back with the new weights swapped in place: seconds instead of
an engine start (pts -> eval -> serve share one fleet). `release_all` deletes what is left, and only
what this run deployed: on a shared cluster the user's own apps keep serving.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ray import serve

from actors.run.cluster import SERVE_CPUS, RayCluster
from actors.serve.names import APP_NAME
from actors.serve.weights import forget_targets, model_shape, refresh_weights


@dataclass
class App:
    name: str
    url: str                      # the app's OpenAI base URL, .../v1
    deployment: str               # the first model's sampler deployment (token-level calls)
    model_id: str                 # the first model's id
    models: dict[str, str]        # model id -> sampler deployment
    folders: dict[str, str] = field(default_factory=dict)  # model id -> the folder it serves now
    reused: bool = False          # an earlier stage's app, weights swapped in place


class Fleet:
    def __init__(self, cluster: RayCluster, serve_cfg):
        self.cluster = cluster
        self.serve = serve_cfg
        self.live: dict[str, App] = {}

    def start(self, models: str | dict[str, str], app: str | None = None) -> App:
        """An app serving `models`: one folder (served as `serve.model_id`) or {model_id: folder}
        behind one endpoint; another `app` name serves beside the main fleet, under /<app>/v1."""
        # deferred: ray.serve.llm imports vLLM (~12 s), which the CLI and non-serving stages never need
        from actors.serve.app import build_sampler_app, sampler_deployment_name, sampler_llm_config

        s = self.serve
        models = models if isinstance(models, dict) else {s.model_id: models}
        models = {mid: str(Path(folder).resolve()) for mid, folder in models.items()}
        self.cluster.ensure(min_cpus=SERVE_CPUS)  # kept running: the app serves until released
        name = app or APP_NAME
        reused = self._reuse(name, models)
        if reused:
            reused.reused = True
            return reused
        serve.start(http_options={"host": s.host, "port": s.port})
        llm_configs = [sampler_llm_config(
            folder, model_id=mid, device=s.device, engine=s.engine, min_replicas=s.min_replicas,
            max_replicas=s.max_replicas, target_ongoing_requests=s.target_ongoing_requests,
            max_model_len=s.max_model_len or None, kv_cache_gib=s.kv_cache_gib,
            max_request_tokens=s.max_request_tokens) for mid, folder in models.items()]
        prefix = "/" if name == APP_NAME else f"/{name}"
        forget_targets(name, [sampler_deployment_name(c) for c in llm_configs])
        serve.run(build_sampler_app(llm_configs, api_key_env=s.api_key_env or None), name=name, route_prefix=prefix)
        host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
        record = App(name=name, url=f"http://{host}:{s.port}{prefix.rstrip('/')}/v1",
                     deployment=sampler_deployment_name(llm_configs[0]), model_id=llm_configs[0].model_id,
                     models={c.model_id: sampler_deployment_name(c) for c in llm_configs}, folders=dict(models))
        self.live[name] = record
        return record

    def _reuse(self, name: str, models: dict[str, str]) -> App | None:
        live = self.live.get(name)
        if not (self.cluster.holding and live and set(live.folders) == set(models)):
            return None
        status = serve.status().applications.get(name)
        if status is None or status.status != "RUNNING":
            return None
        if any(model_shape(live.folders[mid]) != model_shape(folder) for mid, folder in models.items()):
            return None
        for mid, folder in models.items():
            self.swap(live, mid, folder)
        return live

    def swap(self, app: App, model_id: str, folder: str) -> None:
        """Serve another checkpoint of the same shape under `model_id` of a running app, in place."""
        folder = str(Path(folder).resolve())
        if app.folders.get(model_id) != folder:
            refresh_weights(app.name, app.models[model_id], folder)
            app.folders[model_id] = folder

    def release(self, app: App, keep: bool = False) -> None:
        """A stage is done with its app: deleted, or with `keep` inside a pipeline run left up for a
        later stage to reuse. Keep only what a later stage serves and nothing in between needs the
        resources of (a GPU replica left up through a training stage would hold the trainer's GPU)."""
        if not (keep and self.cluster.holding):
            self._delete(app.name)

    def release_all(self) -> None:
        for name in list(self.live):
            self._delete(name)

    def _delete(self, name: str) -> None:
        self.live.pop(name, None)
        serve.delete(name)
