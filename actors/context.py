"""The run context: what every stage's run(ctx) is handed.

It owns the Ray cluster the run started or joined and the fleet of Serve apps the run deployed;
the CLI creates one per invocation and closes it at the end (apps this run deployed are deleted,
a Ray this run started is stopped). Tests build one with `RunContext.local(run_dir, cfg)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import ray

from actors.run.cluster import RayCluster
from actors.serve.fleet import Fleet


@dataclass
class RunContext:
    run_dir: Path
    cfg: object                    # phi4ray.presets.RunConfig
    cluster: RayCluster
    fleet: Fleet
    options: dict = field(default_factory=dict)   # CLI flags of the stage being run (part of its key)
    interactive: bool = False     # a stage a user runs by hand (`phi4ray serve` serves until Ctrl-C)

    @classmethod
    def local(cls, run_dir: str | Path, cfg, *, hold: bool = False, options: dict | None = None,
              log_to_driver: bool = True, dashboard: bool = False) -> "RunContext":
        cluster = RayCluster(hold=hold, log_to_driver=log_to_driver, dashboard=dashboard)
        return cls(Path(run_dir).resolve(), cfg, cluster, Fleet(cluster, cfg.serve), dict(options or {}))

    def close(self) -> None:
        """Delete the apps this run deployed (only ours), then stop Ray if this run started it."""
        if ray.is_initialized():
            self.fleet.release_all()
        self.cluster.close()

    def __enter__(self) -> "RunContext":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
