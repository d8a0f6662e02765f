"""A module as an earlier commit had it, loaded beside today's: for benchmarks that compare a
replaced hand-written implementation with what replaced it, in the same run."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_baseline(commit: str, path: str) -> ModuleType | None:
    """`path` (relative to the repository root) as of `commit`, as a module of its own named
    baseline_<stem>; None where the checkout lacks that history (a shallow clone, a source copy)."""
    try:
        src = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    name = "baseline_" + Path(path).stem
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    sys.modules[name] = mod  # dataclasses look their module up by name
    exec(compile(src, f"{name}.py", "exec"), mod.__dict__)
    return mod
