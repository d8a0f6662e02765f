"""How a stage gets a Ray cluster: the one already connected, else RAY_ADDRESS (a `ray job
submit` or a cluster the user names), else a fresh local one of our own (`address="local"`, never
a stray cluster another process left in /tmp/ray).

A pipeline run (`phi4ray run`) holds one cluster for all its stages (`one_cluster`): a local Ray
start costs ~15 s on a laptop, and Serve's controller, proxy and warm worker processes carry over
from one stage to the next."""
from __future__ import annotations

import contextlib
import os

# logical CPUs of a local cluster that serves models: room for several deployments at once (each
# a replica plus its engine's bundle, and an ingress per app) beside a trainer; they mostly wait,
# so more than cores. The price: Ray Data jobs run slower on such a cluster (see README)
SERVE_CPUS = 12

_held = False  # inside one_cluster(): stages leave Ray running for the next


def ensure_ray(min_cpus: int = 1) -> bool:
    """Connect or start Ray if nobody has; True if this call did (so the caller may stop it).

    min_cpus: logical CPUs for a local cluster; actors that mostly wait (Serve ingress, vLLM
    replicas, training workers) each reserve one, so a laptop gets more than its cores. Under
    one_cluster() the first stage starts it with room for the serving stages that come later."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        cpus = max(min_cpus, SERVE_CPUS if _held else 1, os.cpu_count() or 1)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False)
    return True


def data_cpus() -> int:
    """CPUs Ray Data work should use: the cluster's, but on a local cluster (logical CPUs above
    the cores, see SERVE_CPUS) the real cores, or tasks would outnumber them."""
    import ray

    cluster = int(ray.cluster_resources().get("CPU", 1))
    if os.environ.get("RAY_ADDRESS") or len(ray.nodes()) > 1:
        return cluster
    return max(1, min(cluster, os.cpu_count() or 1))


@contextlib.contextmanager
def ray_session(min_cpus: int = 1):
    """Ray for the duration of a stage; stopped afterwards only if this stage started it (and no
    pipeline holds it), so a later stage (Serve) can start Ray with the resources it needs. Ray
    Data inside is held to data_cpus()."""
    import ray
    import ray.data

    started = ensure_ray(min_cpus)
    options = ray.data.DataContext.get_current().execution_options
    old = options.resource_limits
    options.resource_limits = old.copy(cpu=data_cpus())
    try:
        yield
    finally:
        options.resource_limits = old
        if started and not _held:
            ray.shutdown()


def holding() -> bool:
    """Inside one_cluster(): stages leave their Serve apps up for the next (actors/serve_stage.py)."""
    return _held


@contextlib.contextmanager
def one_cluster():
    """Every stage inside shares one Ray cluster: started (or joined) by the first stage that needs
    Ray, left running between stages with the Serve apps stages left up; at the end those apps are
    deleted (only ours: on a cluster the user's own apps keep serving) and Ray is stopped or left."""
    global _held
    import sys

    was_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    _held = True
    try:
        yield
    finally:
        _held = False
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            from actors.serve_stage import release_all

            release_all()
            if not was_up:
                sys.modules["ray"].shutdown()
