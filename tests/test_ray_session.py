"""One Ray cluster for a whole pipeline run: stages of a holding run context share it, Ray Data keeps to
the real cores of a local cluster whose logical CPUs are oversubscribed, and it stops at the end.
Run in a subprocess: this test process may hold the session's cluster already."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ray

SCRIPT = """
import json, os, ray, ray.data
from actors.run.cluster import SERVE_CPUS
from actors.context import RunContext
from phi4ray.presets import run_preset
cfg = run_preset("tiny")

def inside():
    return {"node": ray.get_runtime_context().get_node_id(), "cpus": ray.cluster_resources()["CPU"],
            "data_cpus": ray.data.DataContext.get_current().execution_options.resource_limits.cpu}

out = {}
with RunContext.local("/tmp/unused", cfg, hold=True) as ctx:
    with ctx.cluster.session():
        out["first"] = inside()
    out["up_between"] = ray.is_initialized()
    with ctx.cluster.session(min_cpus=4):
        out["second"] = inside()
out["up_after"] = ray.is_initialized()
out["data_cpus_after"] = ray.data.DataContext.get_current().execution_options.resource_limits.cpu
with RunContext.local("/tmp/unused", cfg) as ctx:  # a lone stage starts and stops its own
    with ctx.cluster.session():
        out["lone"] = inside()
    out["lone_up_after"] = ray.is_initialized()
out["serve_cpus"] = SERVE_CPUS
print("RESULT " + json.dumps(out))
"""


def test_stages_in_one_cluster_share_it_and_it_stops_at_the_end():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.split("RESULT ", 1)[1])
    cores = os.cpu_count()
    assert out["first"]["node"] == out["second"]["node"] and out["up_between"]
    assert out["first"]["cpus"] == out["serve_cpus"]  # room for the serving stages from the start
    assert out["first"]["data_cpus"] == out["second"]["data_cpus"] == min(cores, out["serve_cpus"])
    assert not out["up_after"] and out["data_cpus_after"] == float("inf")
    assert out["lone"]["node"] != out["first"]["node"] and out["lone"]["cpus"] == cores
    assert not out["lone_up_after"]


def where(tag: str, device: str = "") -> dict:
    return {"pid": os.getpid(), "tag": tag, "device": device}


def test_on_worker_runs_the_function_off_the_driver(ray_cluster):
    from actors.run.off_driver import on_worker

    got = on_worker(where, "x", gpu=False)
    assert got["pid"] != os.getpid() and got == {**got, "tag": "x", "device": "cpu"}
