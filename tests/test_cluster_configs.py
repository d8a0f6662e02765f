"""Cluster configs are checked with Ray's own code where Ray has it, not just parsed.

- Launcher YAMLs (AWS, GCP): Ray's prepare_config (fills the provider defaults, merges setup
  commands, checks Docker) then validate_config (ray-schema.json); then Ray's own bin-packing
  (the autoscaler's get_nodes_for) decides which group each stage's demand lands on. All offline:
  no cloud credentials, no boto3 or Google API client.
- KubeRay manifests: validated against the OpenAPI schemas of KubeRay's CRDs (the v1.7.0 release,
  vendored in cluster/crds/ by cluster/crds/vendor.py) with jsonschema, read the way the apiserver
  reads them (strict unknown fields, int-or-string, list-map keys); then the few rules no schema
  states (KubeRay's validation.go, Kubernetes' pod rules), Ray's own validators for what Ray reads
  (Serve's ServeDeploySchema, RuntimeEnv) and phi4ray's CLI parser for the RayJob's entrypoint.
  No cluster and no kubectl needed.
"""
from __future__ import annotations

import copy
import functools
import math
import re
import shlex
from pathlib import Path

import jsonschema
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
    # this working tree on every node; the head and GPU nodes install the gpu extra, CPU nodes the
    # cpu one, as the two Dockerfiles do (tests/test_images.py: which images, which install)
    assert cfg["file_mounts"] == {"~/phi4ray": "."} and ".gitignore" in cfg["rsync_filter"]
    gpu_install = "bash scripts/install.sh gpu"
    assert any(gpu_install in c for c in cfg["head_setup_commands"])
    assert "worker_setup_commands" not in types[gpu] and any(gpu_install in c for c in cfg["worker_setup_commands"])
    cpu_setup = " ".join(types[cpu]["worker_setup_commands"])
    assert "bash scripts/install.sh cpu" in cpu_setup and "gpu" not in cpu_setup
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

CRDS = CLUSTER / "crds"   # KubeRay's CRDs, cut down by cluster/crds/vendor.py
GPU = "nvidia.com/gpu"
IMAGE_REPO = "/home/ray/phi4ray"   # where the phi4ray images hold this repo (Dockerfile, Dockerfile.gpu)


def _map_keys(validator, keys, instance, schema):
    """x-kubernetes-list-type: map: no two items with the same keys (a key's default when unset)."""
    if not validator.is_type(instance, "array"):
        return
    props = schema.get("items", {}).get("properties", {})
    seen = {}
    for i, item in enumerate(instance):
        if isinstance(item, dict):
            key = tuple(item.get(k, props.get(k, {}).get("default")) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(f"items {seen[key]} and {i} have the same {keys}: {key}")
            seen[key] = i


def _cel(validator, rules, instance, schema):
    """x-kubernetes-validations: CEL, which the apiserver evaluates and this check cannot. A manifest
    that sets such a field fails here, loudly, rather than passing unchecked; rules on oldSelf only
    concern updates of a live object and are skipped."""
    unchecked = [r["rule"] for r in rules if "oldSelf" not in r["rule"]]
    if unchecked:
        yield jsonschema.ValidationError(f"CEL rules this offline check cannot evaluate: {unchecked}")


def _as_jsonschema(s: dict, memo: dict) -> dict:
    """One CRD schema node in JSON Schema (draft 4), as the apiserver reads Kubernetes' extensions:
    - an object with `properties` is closed: kubectl's strict field validation (the default) refuses
      an unknown field, unless x-kubernetes-preserve-unknown-fields says to keep them;
    - x-kubernetes-int-or-string: an integer or a string (a string still has to match `pattern`);
    - nullable: null is also accepted (elsewhere this check refuses null, where the apiserver would
      drop it: a null in a manifest is a mistake);
    - list-type set: unique items; list-type map: unique keys (_map_keys).
    The vendored files share subschemas (YAML anchors), so results are memoised by identity."""
    if id(s) in memo:
        return memo[id(s)]
    out = dict(s)
    memo[id(s)] = out
    if "properties" in s:
        out["properties"] = {k: _as_jsonschema(v, memo) for k, v in s["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(s.get(key), dict):
            out[key] = _as_jsonschema(s[key], memo)
    for key in ("anyOf", "allOf", "oneOf"):
        if key in s:
            out[key] = [_as_jsonschema(x, memo) for x in s[key]]
    if s.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.get("type") == "object" and "properties" in s and "additionalProperties" not in s \
            and not s.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if s.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if s.get("nullable"):
        inner = {k: v for k, v in out.items() if k != "nullable"}
        out.clear()
        out["anyOf"] = [{"type": "null"}, inner]
    return out


@functools.cache
def _crd(kind: str) -> dict:
    # libyaml's loader when there: the pure-Python one takes a second a file
    crd = yaml.load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == kind
    return crd


@functools.cache
def _crd_validator(kind: str):
    crd = _crd(kind)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1" and v["served"]]
    schema = _as_jsonschema(v1["schema"]["openAPIV3Schema"], {})
    cls = jsonschema.validators.extend(jsonschema.Draft4Validator, {
        "x-kubernetes-list-map-keys": _map_keys, "x-kubernetes-validations": _cel})
    return cls(schema)  # no check_schema: seconds over the un-shared tree, and test_vendored_crds_... checks keywords


def crd_errors(doc: dict) -> list[str]:
    """What the apiserver would refuse in this manifest, by the schema of KubeRay's CRD for its kind."""
    assert doc["apiVersion"] == "ray.io/v1", doc["apiVersion"]
    errors = _crd_validator(doc["kind"]).iter_errors(doc)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def kuberay_problems(spec: dict) -> list[str]:
    """The rules a RayClusterSpec must follow that no CRD schema states: KubeRay's own validation
    (ray-operator/controllers/ray/utils/validation.go: a container in every group, minReplicas <=
    maxReplicas), Kubernetes' pod validation (an extended resource's request equals its limit), and
    ours: the installed Ray, unique group names, replicas within its bounds."""
    problems = []
    if spec["rayVersion"] != ray.__version__:
        problems.append(f"rayVersion {spec['rayVersion']!r} is not the installed Ray {ray.__version__}")
    groups = [("headGroupSpec", spec["headGroupSpec"])]
    groups += [(f"workerGroupSpecs[{w['groupName']}]", w) for w in spec.get("workerGroupSpecs", [])]
    for where, group in groups:
        containers = group["template"].get("spec", {}).get("containers") or []
        if not containers:
            problems.append(f"{where}: template.spec.containers is empty")
        for c in containers:
            res = c.get("resources", {})
            lim, req = res.get("limits", {}), res.get("requests", {})
            if GPU in req and req[GPU] != lim.get(GPU):
                problems.append(f"{where}.{c['name']}: {GPU} request {req[GPU]!r} != limit {lim.get(GPU)!r}")
    names = [w["groupName"] for w in spec.get("workerGroupSpecs", [])]
    if len(set(names)) != len(names):
        problems.append(f"workerGroupSpecs: repeated groupName: {names}")
    for w in spec.get("workerGroupSpecs", []):
        lo, hi = w["minReplicas"], w["maxReplicas"]
        if not lo <= w.get("replicas", lo) <= hi:
            problems.append(f"workerGroupSpecs[{w['groupName']}]: need minReplicas ({lo}) <= "
                            f"replicas ({w.get('replicas')}) <= maxReplicas ({hi})")
    return problems


MANIFESTS = {"raycluster.yaml": ("spec",), "rayjob-pipeline.yaml": ("spec", "rayClusterSpec"),
             "rayservice-sampler.yaml": ("spec", "rayClusterConfig")}


def _cluster_spec(name: str) -> dict:
    node = _load(name)
    for key in MANIFESTS[name]:
        node = node[key]
    return node


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_passes_kuberays_crd_schema_and_validation(name):
    assert crd_errors(_load(name)) == []
    assert kuberay_problems(_cluster_spec(name)) == []


def test_vendored_crds_are_kuberays_v1_schemas_without_descriptions():
    pinned = re.search(r'KUBERAY_VERSION = "(v[\d.]+)"', (CRDS / "vendor.py").read_text()).group(1)

    def keywords(schema: dict, seen: set) -> set[str]:
        """Every keyword of this schema and of the schemas under it (shared ones walked once)."""
        if id(schema) in seen:
            return set()
        seen.add(id(schema))
        subs = [*schema.get("properties", {}).values(), *schema.get("anyOf", []), *schema.get("allOf", []),
                *schema.get("oneOf", [])]
        subs += [schema[k] for k in ("items", "additionalProperties", "not") if isinstance(schema.get(k), dict)]
        return set(schema).union(*(keywords(sub, seen) for sub in subs))

    for kind in ("RayCluster", "RayJob", "RayService"):
        path = CRDS / f"ray.io_{kind.lower()}s.yaml"
        assert f"kuberay {pinned}\n" in path.read_text().splitlines(keepends=True)[0], path.name
        crd = _crd(kind)
        assert crd["kind"] == "CustomResourceDefinition" and [v["name"] for v in crd["spec"]["versions"]] == ["v1"]
        used = keywords(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], set())
        assert "description" not in used and "status" not in crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
            "properties"]
        # every keyword is one _as_jsonschema or draft 4 understands, or one that does not validate
        understood = {"type", "properties", "items", "additionalProperties", "required", "enum", "pattern", "format",
                      "anyOf", "allOf", "oneOf", "not", "minimum", "maximum", "minItems", "maxItems", "minLength",
                      "maxLength", "minProperties", "maxProperties", "uniqueItems", "nullable", "default",
                      "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type",
                      "x-kubernetes-list-map-keys", "x-kubernetes-validations", "x-kubernetes-map-type"}
        assert used <= understood, used - understood


def _set(doc: dict, path: tuple, value) -> dict:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


_DELETE = object()
_W1 = ("spec", "workerGroupSpecs", 1)       # the GPU group of raycluster.yaml
_C0 = (*_W1, "template", "spec", "containers", 0)


@pytest.mark.parametrize("name, path, value, message", [
    # a misspelt field, at each level: the spec, a worker group, a Kubernetes container
    ("raycluster.yaml", ("spec", "enableInTreeAutoScaling"), True, "'enableInTreeAutoScaling' was unexpected"),
    ("raycluster.yaml", (*_W1, "maxReplica"), 4, "'maxReplica' was unexpected"),
    ("raycluster.yaml", (*_C0, "resource"), {}, "'resource' was unexpected"),
    ("rayjob-pipeline.yaml", ("spec", "shutdownAfterJobFinish"), True, "'shutdownAfterJobFinish' was unexpected"),
    ("rayservice-sampler.yaml", ("spec", "serveConfig"), "", "'serveConfig' was unexpected"),
    # wrong types and values
    ("raycluster.yaml", (*_W1, "replicas"), "4", "'4' is not of type 'integer'"),
    ("raycluster.yaml", ("spec", "headGroupSpec", "rayStartParams", "num-cpus"), 0, "0 is not of type 'string'"),
    ("raycluster.yaml", ("spec", "autoscalerOptions", "upscalingMode"), "Fast", "'Fast' is not one of"),
    ("raycluster.yaml", (*_C0, "resources", "limits", "memory"), "900 GB", "'900 GB' does not match"),
    ("raycluster.yaml", (*_C0, "resources", "limits", "cpu"), 96.5, "is not valid under any"),
    ("rayjob-pipeline.yaml", ("spec", "backoffLimit"), "2", "'2' is not of type 'integer'"),
    # required fields, Kubernetes' list-map keys, and a field whose CEL rule this check cannot run
    ("raycluster.yaml", (*_W1, "groupName"), _DELETE, "'groupName' is a required property"),
    ("raycluster.yaml", (*_C0, "name"), _DELETE, "'name' is a required property"),
    ("raycluster.yaml", (*_C0, "ports"), [{"containerPort": 80}, {"containerPort": 80, "protocol": "TCP"}],
     "have the same ['containerPort', 'protocol']"),
    ("rayjob-pipeline.yaml", ("spec", "deletionStrategy"), {"onSuccess": {"policy": "DeleteCluster"}},
     "CEL rules"),
])
def test_crd_schema_refuses_a_broken_manifest(name, path, value, message):
    errors = crd_errors(_set(_load(name), path, value))
    assert len(errors) == 1 and message in errors[0], errors


@pytest.mark.parametrize("path, value", [
    ((*_C0, "resources", "limits", "cpu"), 96),          # int-or-string: an integer quantity
    ((*_C0, "resources", "limits", "memory"), "900Gi"),
    ((*_W1, "rayStartParams"), {"num-gpus": "8", "object-store-memory": "100000000000"}),
])
def test_crd_schema_accepts_what_kubernetes_accepts(path, value):
    assert crd_errors(_set(_load("raycluster.yaml"), path, value)) == []


@pytest.mark.parametrize("path, value, message", [
    (("rayVersion",), "2.9.0", "rayVersion"),
    (("workerGroupSpecs", 0, "replicas"), 99, "maxReplicas"),
    (("workerGroupSpecs", 1, "groupName"), "cpu", "repeated groupName"),
    (("workerGroupSpecs", 1, "template", "spec", "containers", 0, "resources", "requests", GPU), "4", "request"),
    (("workerGroupSpecs", 1, "template", "spec", "containers"), [], "containers is empty"),
])
def test_kuberay_rules_beyond_the_schema_name_what_is_wrong(path, value, message):
    problems = kuberay_problems(_set(_load("raycluster.yaml")["spec"], path, value))
    assert len(problems) == 1 and message in problems[0], problems


def _gpu_groups(spec: dict) -> dict[str, str]:
    return {w["groupName"]: c["resources"]["limits"][GPU] for w in spec["workerGroupSpecs"]
            for c in w["template"]["spec"]["containers"] if GPU in c.get("resources", {}).get("limits", {})}


def _mounts(group: dict) -> set[str]:
    return {m["mountPath"] for c in group["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])}


def test_raycluster_manifest_autoscales_both_groups_from_zero():
    doc = _load("raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    spec = doc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {w["groupName"]: w for w in spec["workerGroupSpecs"]}
    assert _gpu_groups(spec) == {"gpu": "8"}           # CPU group without GPUs, GPU group with whole nodes
    assert all(w["minReplicas"] == 0 for w in groups.values())  # both scale from zero
    assert all("/data" in _mounts(g) for g in [spec["headGroupSpec"], *groups.values()])


def test_rayjob_runs_a_real_entrypoint_on_the_same_cluster_and_cleans_up():
    from ray.runtime_env import RuntimeEnv

    from jobs.cli import build_parser
    from phi4ray.presets import run_preset
    from phi4ray.run.overrides import apply_overrides

    doc = _load("rayjob-pipeline.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    # the cluster goes once the job ends: after a while to read the logs, not hours of idle GPU nodes
    ttl = spec["ttlSecondsAfterFinished"]
    assert spec["shutdownAfterJobFinishes"] is True and type(ttl) is int and 60 <= ttl <= 3600, ttl
    assert spec["rayClusterSpec"] == _load("raycluster.yaml")["spec"]  # the two copies stay equal
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


# ---------------------------------------------------------------- KubeRay RayService (sampler fleet)

@pytest.mark.ray
def test_rayservice_serve_config_is_valid_and_builds(tiny_export):
    from ray.serve.schema import ServeDeploySchema

    from actors.serve.app import app_builder

    doc = yaml.safe_load((ROOT / "cluster" / "rayservice-sampler.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    serve_cfg = ServeDeploySchema.model_validate(yaml.safe_load(doc["spec"]["serveConfigV2"]))
    app = serve_cfg.applications[0]
    module, attr = app.import_path.split(":")
    assert (module, attr) == ("actors.serve.app", "app_builder")
    # the builder accepts exactly these args (with a local model folder in place of the PVC path)
    args = {**app.args, "model_dir": str(tiny_export), "api_key_env": None}
    started_here = not ray.is_initialized()
    built = app_builder(args)
    if started_here:  # building the app object starts a default local Ray; leave none behind
        ray.shutdown()
    assert built is not None
    cluster = doc["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert _gpu_groups(cluster) == {"gpu": "1"}
    workers = cluster["workerGroupSpecs"][0]
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
