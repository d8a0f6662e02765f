"""Cluster manifests are checked against Ray's own schemas, not just parsed."""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_rayservice_serve_config_is_valid_and_builds(tiny_export):
    from ray.serve.schema import ServeDeploySchema

    from actors.serve_app import app_builder

    doc = yaml.safe_load((ROOT / "cluster" / "rayservice-sampler.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    serve_cfg = ServeDeploySchema.model_validate(yaml.safe_load(doc["spec"]["serveConfigV2"]))
    app = serve_cfg.applications[0]
    module, attr = app.import_path.split(":")
    assert (module, attr) == ("actors.serve_app", "app_builder")
    # the builder accepts exactly these args (with a local model folder in place of the PVC path)
    args = {**app.args, "model_dir": str(tiny_export), "api_key_env": None}
    import ray

    started_here = not ray.is_initialized()
    built = app_builder(args)
    if started_here:  # building the app object starts a default local Ray; leave none behind
        ray.shutdown()
    assert built is not None
    head = doc["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    workers = doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
