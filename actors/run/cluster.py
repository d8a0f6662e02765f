"""The Ray cluster a run started or joined, as an object the run context owns.

Which cluster: the one this process is already connected to, else RAY_ADDRESS (a `ray job submit`
or a cluster the user names), else a fresh local one of our own (`address="local"`, never a stray
cluster another process left in /tmp/ray).

A pipeline run holds one cluster for all its stages (`hold=True`): a local Ray start costs ~15 s on
a laptop, and Serve's controller, proxy and warm worker processes carry over between stages. A lone
stage (`hold=False`) stops the Ray it started when the stage ends.
"""
from __future__ import annotations

import contextlib
import os

import ray
import ray.data

from phi4ray.run.console import say

# logical CPUs of a local cluster that serves models: room for several deployments at once (each
# a replica plus its engine's bundle, and an ingress per app) beside a trainer; they mostly wait,
# so more than cores. The price: Ray Data jobs run slower on such a cluster (docs/decisions.md)
SERVE_CPUS = 12


class RayCluster:
    def __init__(self, hold: bool = False, log_to_driver: bool = True, dashboard: bool = False):
        self.hold = hold
        self.log_to_driver = log_to_driver
        self.dashboard = dashboard  # a local cluster's dashboard (the CLI's; tests start Ray without it)
        self.started = False     # this object started Ray (so it stops it)

    @property
    def holding(self) -> bool:
        """A whole-pipeline run: stages may leave Serve apps up for later stages to reuse."""
        return self.hold

    def ensure(self, min_cpus: int = 1) -> bool:
        """Connect or start Ray if nobody has; True if this call started it.

        min_cpus: logical CPUs for a local cluster; actors that mostly wait (Serve ingress, vLLM
        replicas, training workers) each reserve one, so a laptop gets more than its cores. A
        holding cluster starts with room for the serving stages that come later."""
        if ray.is_initialized():
            return False
        if os.environ.get("RAY_ADDRESS"):
            info = ray.init(log_to_driver=self.log_to_driver)
            where = f"joined the Ray cluster at {info.address_info.get('gcs_address', os.environ['RAY_ADDRESS'])}"
        else:
            cpus = max(min_cpus, SERVE_CPUS if self.hold else 1, os.cpu_count() or 1)
            info = ray.init(address="local", num_cpus=cpus, include_dashboard=self.dashboard,
                            log_to_driver=self.log_to_driver)
            where = f"started a local Ray cluster ({cpus} logical CPUs)"
        url = info.dashboard_url
        say(f"phi4ray: {where}; dashboard {'http://' + url if url and '://' not in url else url or 'off'}")
        self.started = True
        return True

    def data_cpus(self) -> int:
        """CPUs Ray Data work should use: the cluster's, but on a local cluster (logical CPUs above
        the cores, see SERVE_CPUS) the real cores, or tasks would outnumber them."""
        cluster = int(ray.cluster_resources().get("CPU", 1))
        if os.environ.get("RAY_ADDRESS") or len(ray.nodes()) > 1:
            return cluster
        return max(1, min(cluster, os.cpu_count() or 1))

    @contextlib.contextmanager
    def session(self, min_cpus: int = 1):
        """Ray for the duration of a stage, Ray Data held to data_cpus(); a cluster that does not
        hold stops the Ray it started afterwards, so a later stage (Serve) can start Ray with the
        resources it needs."""
        started = self.ensure(min_cpus)
        options = ray.data.DataContext.get_current().execution_options
        old = options.resource_limits
        options.resource_limits = old.copy(cpu=self.data_cpus())
        try:
            yield self
        finally:
            options.resource_limits = old
            if started and not self.hold:
                self.close()

    def close(self) -> None:
        """Stop Ray if this object started it; a cluster we joined keeps running."""
        if self.started and ray.is_initialized():
            ray.shutdown()
        self.started = False
