"""Cluster configs are checked with Ray's own code where Ray has it, not just parsed.

- Launcher YAMLs (AWS, GCP): Ray's prepare_config (fills the provider defaults, merges setup
  commands, checks Docker) then validate_config (ray-schema.json); then Ray's own bin-packing
  (the autoscaler's get_nodes_for) decides which group each stage's demand lands on. All offline:
  no cloud credentials, no boto3 or Google API client.
- KubeRay manifests: the CRDs are not installed here, so a structural check of what KubeRay
  requires (field names from its v1 Go types, required fields, replica bounds, string-valued
  rayStartParams, GPU limits) plus Ray's own validators for what Ray reads (Serve's
  ServeDeploySchema, RuntimeEnv) and phi4ray's CLI parser for the RayJob's entrypoint.
"""
from __future__ import annotations

import copy
import functools
import math
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"

# Demand shapes of the stages (inputs to the scheduler, from the code that asks for them)
DATA_TASK = {"CPU": 1}                    # a Ray Data task (curate, tokenize)
TRAIN_WORKER = {"CPU": 4, "GPU": 1}       # actors/trainer.run_training, use_gpu=True
SAMPLER_REPLICA = {"GPU": 1, "CPU": 1}    # actors/serve_app: one vLLM replica's bundle


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


# ---------------------------------------------------------------- cluster launcher (AWS, GCP)

@pytest.fixture(params=["aws.yaml", "gcp.yaml"])
def launcher(request) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(_load(request.param)))
    validate_config(cfg)  # raises jsonschema.ValidationError / ValueError naming the field
    return cfg


def _groups(cfg: dict) -> tuple[str, str, str]:
    """(head, cpu, gpu) node type names: exactly one worker type with GPUs and one without."""
    head = cfg["head_node_type"]
    workers = [n for n in cfg["available_node_types"] if n != head]
    gpu = [n for n in workers if cfg["available_node_types"][n]["resources"].get("GPU")]
    cpu = [n for n in workers if n not in gpu]
    assert len(gpu) == 1 and len(cpu) == 1, f"want one CPU and one GPU worker group, got {workers}"
    return head, cpu[0], gpu[0]


def test_launcher_config_passes_rays_validation_and_is_what_we_mean(launcher):
    cfg = launcher
    head, cpu, gpu = _groups(cfg)
    types = cfg["available_node_types"]
    assert types[head]["resources"] == {"CPU": 0} and types[head]["max_workers"] == 0
    for name in (cpu, gpu):  # both groups scale from zero, within the global cap
        assert types[name]["min_workers"] == 0 < types[name]["max_workers"] <= cfg["max_workers"]
    assert cfg["idle_timeout_minutes"] > 0
    # every node runs Ray's image of the installed Ray version (nodes must match the client)
    images = [cfg["docker"]["image"], types[cpu]["docker"]["worker_image"]]
    assert all(i.startswith(f"rayproject/ray:{ray.__version__}-py3") for i in images), images
    assert len({i.split("-py")[1].split("-")[0] for i in images}) == 1, f"Python versions differ: {images}"
    # this working tree on every node; GPU nodes and the head install the GPU extra, CPU nodes not
    assert cfg["file_mounts"] == {"~/phi4ray": "."} and ".gitignore" in cfg["rsync_filter"]
    gpu_extra = 'pip install -e ".[gpu]"'
    assert any(gpu_extra in c for c in cfg["head_setup_commands"])
    assert "worker_setup_commands" not in types[gpu] and any(gpu_extra in c for c in cfg["worker_setup_commands"])
    cpu_setup = " ".join(types[cpu]["worker_setup_commands"])
    assert "pip install -e ." in cpu_setup and "[gpu]" not in cpu_setup
    # the shared run directory: mounted on every host, bound into every container
    assert any("/data" in c and "mount" in c for c in cfg["initialization_commands"])
    assert "-v /data:/data" in cfg["docker"]["run_options"]


def test_autoscaler_sends_each_stage_to_its_group(launcher):
    """Ray's own bin-packing over these node types: CPU-only work never starts a GPU node, a
    stage gets just the nodes it needs, and the group's max_workers caps a runaway request."""
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    cfg = launcher
    head, cpu, gpu = _groups(cfg)
    types = cfg["available_node_types"]
    scorer = functools.partial(_default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({}))

    def nodes_for(demand: list[dict]) -> tuple[dict, int]:
        added, residual = get_nodes_for(types, {head: 1}, head, cfg["max_workers"], demand, scorer)
        return dict(added), len(residual)

    cpus_per_node, gpus_per_node = types[cpu]["resources"]["CPU"], types[gpu]["resources"]["GPU"]
    assert nodes_for([DATA_TASK] * 200) == ({cpu: math.ceil(200 / cpus_per_node)}, 0)
    assert nodes_for([TRAIN_WORKER] * gpus_per_node) == ({gpu: 1}, 0)  # one FSDP run, one whole node
    assert nodes_for([SAMPLER_REPLICA] * 12) == ({gpu: math.ceil(12 / gpus_per_node)}, 0)
    too_many = (types[gpu]["max_workers"] + 1) * gpus_per_node
    assert nodes_for([TRAIN_WORKER] * too_many) == ({gpu: types[gpu]["max_workers"]}, gpus_per_node)


def test_broken_launcher_configs_are_refused():
    """The validation above can fail: a misspelt field and a resource count Ray cannot read."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load("aws.yaml")
    typo = copy.deepcopy(raw)
    typo["available_node_types"]["gpu_worker"]["max_worker"] = 4
    frac = copy.deepcopy(raw)
    frac["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    for bad, field in ((typo, "max_worker"), (frac, "0.5")):
        with pytest.raises(jsonschema.ValidationError, match=re.escape(field)):
            validate_config(prepare_config(bad))


# ---------------------------------------------------------------- KubeRay manifests

# Field names of KubeRay's v1 API (ray-operator/apis/ray/v1/*_types.go, json tags)
RAYCLUSTER_SPEC = {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
                   "autoscalerOptions", "headServiceAnnotations", "suspend", "managedBy",
                   "gcsFaultToleranceOptions"}
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams",
                "template", "scaleStrategy", "idleTimeoutSeconds", "suspend"}
AUTOSCALER = {"resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext",
              "idleTimeoutSeconds", "upscalingMode", "version"}
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
               "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
               "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule"}
GPU = "nvidia.com/gpu"
IMAGE_REPO = "/home/ray/phi4ray"   # where the phi4ray image holds this repo (cluster/raycluster.yaml)


def _unknown(obj: dict, known: set, where: str) -> list[str]:
    return [f"{where}: unknown field {k!r}" for k in sorted(set(obj) - known)]


def raycluster_problems(spec: dict) -> list[str]:
    """What KubeRay would refuse or mis-read in a RayClusterSpec, one message per problem."""
    problems = _unknown(spec, RAYCLUSTER_SPEC, "spec")
    if spec.get("rayVersion") != ray.__version__:
        problems.append(f"rayVersion {spec.get('rayVersion')!r} is not the installed Ray {ray.__version__}")
    problems += _unknown(spec.get("autoscalerOptions", {}), AUTOSCALER, "autoscalerOptions")
    if spec.get("autoscalerOptions", {}).get("upscalingMode", "Default") not in ("Default", "Aggressive", "Conservative"):
        problems.append(f"autoscalerOptions.upscalingMode {spec['autoscalerOptions']['upscalingMode']!r}")
    if "headGroupSpec" not in spec:
        return problems + ["spec: headGroupSpec is required"]
    groups = [("headGroupSpec", spec["headGroupSpec"], HEAD_GROUP)]
    groups += [(f"workerGroupSpecs[{w.get('groupName')}]", w, WORKER_GROUP) for w in spec.get("workerGroupSpecs", [])]
    images = set()
    for where, group, known in groups:
        problems += _unknown(group, known, where)
        params = group.get("rayStartParams", {})
        problems += [f"{where}.rayStartParams.{k}: {v!r} is not a string" for k, v in params.items()
                     if not isinstance(v, str)]
        containers = group.get("template", {}).get("spec", {}).get("containers") or []
        if not containers:
            problems.append(f"{where}: template.spec.containers is empty")
        for c in containers:
            images.add(c.get("image"))
            res = c.get("resources", {})
            lim, req = res.get("limits", {}), res.get("requests", {})
            if GPU in req and req[GPU] != lim.get(GPU):  # Kubernetes: extended resources need request == limit
                problems.append(f"{where}.{c.get('name')}: {GPU} request {req[GPU]!r} != limit {lim.get(GPU)!r}")
    names = [w.get("groupName") for w in spec.get("workerGroupSpecs", [])]
    if len(set(names)) != len(names) or None in names:
        problems.append(f"workerGroupSpecs: groupName missing or repeated: {names}")
    for w in spec.get("workerGroupSpecs", []):
        lo, hi = w.get("minReplicas"), w.get("maxReplicas")
        n = w.get("replicas", lo)
        if lo is None or hi is None or not 0 <= lo <= n <= hi:
            problems.append(f"workerGroupSpecs[{w.get('groupName')}]: need 0 <= minReplicas ({lo}) <= "
                            f"replicas ({n}) <= maxReplicas ({hi})")
    if len(images) > 1:  # Ray refuses nodes whose Ray or Python differs from the head's
        problems.append(f"pods run different images: {sorted(map(str, images))}")
    return problems


def _gpu_groups(spec: dict) -> dict[str, str]:
    return {w["groupName"]: c["resources"]["limits"][GPU] for w in spec["workerGroupSpecs"]
            for c in w["template"]["spec"]["containers"] if GPU in c.get("resources", {}).get("limits", {})}


def _mounts(group: dict) -> set[str]:
    return {m["mountPath"] for c in group["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])}


def test_raycluster_manifest_is_well_formed_and_autoscales():
    doc = _load("raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    spec = doc["spec"]
    assert raycluster_problems(spec) == []
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {w["groupName"]: w for w in spec["workerGroupSpecs"]}
    assert _gpu_groups(spec) == {"gpu": "8"}           # CPU group without GPUs, GPU group with whole nodes
    assert all(w["minReplicas"] == 0 for w in groups.values())  # both scale from zero
    assert all("/data" in _mounts(g) for g in [spec["headGroupSpec"], *groups.values()])


def test_rayjob_runs_a_real_entrypoint_on_the_same_cluster_and_cleans_up():
    from ray.runtime_env import RuntimeEnv

    from jobs.cli import build_parser
    from phi4ray.overrides import apply_overrides
    from phi4ray.presets import run_preset

    doc = _load("rayjob-pipeline.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    assert _unknown(spec, RAYJOB_SPEC, "spec") == []
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    assert spec["rayClusterSpec"] == _load("raycluster.yaml")["spec"]  # the two copies stay equal
    assert raycluster_problems(spec["rayClusterSpec"]) == []
    # the job runs in the repo's copy inside the image; Ray's own runtime_env validation, with this
    # checkout standing in for that copy (Ray checks that a local working_dir exists)
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert env["working_dir"] == IMAGE_REPO
    RuntimeEnv(**{**env, "working_dir": str(ROOT)})
    # the entrypoint: an existing jobs/ file, arguments its stage's parser and config accept
    python, script, *args = shlex.split(spec["entrypoint"])
    assert python == "python" and (ROOT / script).is_file() and script.startswith("jobs/")
    stage = re.search(r'main\(\["(\w+)"', (ROOT / script).read_text()).group(1)
    parsed = build_parser().parse_args([stage, *args])
    apply_overrides(run_preset(parsed.preset), parsed.overrides)  # raises ConfigError / OverrideError
    assert (stage, parsed.preset, parsed.run_dir) == ("run", "small", "/data/run")
    # RUN is on the volume every pod mounts
    cluster = spec["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert any(parsed.run_dir.startswith(m + "/") for m in _mounts(group))


@pytest.mark.parametrize("path, value, message", [
    (("rayVersion",), "2.9.0", "rayVersion"),
    (("headGroupSpec", "rayStartParams", "num-cpus"), 0, "is not a string"),
    (("workerGroupSpecs", 0, "replicas"), 99, "maxReplicas"),
    (("workerGroupSpecs", 1, "maxReplica"), 4, "unknown field 'maxReplica'"),
    (("workerGroupSpecs", 1, "template", "spec", "containers", 0, "resources", "requests", GPU), "4", "request"),
    (("workerGroupSpecs", 1, "template", "spec", "containers", 0, "image"), "other:1", "different images"),
])
def test_structural_check_names_what_is_wrong(path, value, message):
    spec = copy.deepcopy(_load("raycluster.yaml")["spec"])
    node = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    problems = raycluster_problems(spec)
    assert len(problems) == 1 and message in problems[0], problems


# ---------------------------------------------------------------- KubeRay RayService (sampler fleet)

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
    started_here = not ray.is_initialized()
    built = app_builder(args)
    if started_here:  # building the app object starts a default local Ray; leave none behind
        ray.shutdown()
    assert built is not None
    cluster = doc["spec"]["rayClusterConfig"]
    assert raycluster_problems(cluster) == []
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert _gpu_groups(cluster) == {"gpu": "1"}
    workers = cluster["workerGroupSpecs"][0]
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
