"""How a stage gets a Ray cluster: the one already connected, else RAY_ADDRESS (a `ray job
submit` or a cluster the user names), else a fresh local one of our own (`address="local"`, never
a stray cluster another process left in /tmp/ray)."""
from __future__ import annotations

import contextlib
import os

# logical CPUs of a local cluster that serves models: room for eval's five stage models at once
# (each a replica plus its engine's bundle) and the ingress; they mostly wait, so more than cores
SERVE_CPUS = 12


def ensure_ray(min_cpus: int = 1) -> bool:
    """Connect or start Ray if nobody has; True if this call did (so the caller may stop it).

    min_cpus: logical CPUs for a local cluster; actors that mostly wait (Serve ingress, vLLM
    replicas, training workers) each reserve one, so a laptop gets more than its cores."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(address="local", num_cpus=max(min_cpus, os.cpu_count() or 1), include_dashboard=False)
    return True


@contextlib.contextmanager
def ray_session(min_cpus: int = 1):
    """Ray for the duration of a stage; stopped afterwards only if this stage started it, so a
    later stage (Serve) can start Ray with the resources it needs."""
    import ray

    started = ensure_ray(min_cpus)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
