"""Run a library function where the models are, not in the driver: one Ray task, with a GPU when
the run's preset trains on GPUs. The stages' before/after measures (SFT's held-out loss, DPO's
held-out margins and success) load a whole model; at 14B that is no job for the driver."""
from __future__ import annotations

import ray


def on_worker(fn, *args, gpu: bool = False, **kwargs):
    """`fn(*args, device=..., **kwargs)` in a Ray task (1 CPU, plus 1 GPU with `gpu`); its result."""
    task = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=0)(fn)
    return ray.get(task.remote(*args, device="cuda" if gpu else "cpu", **kwargs))
