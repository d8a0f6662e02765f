"""The console: a stage's lines reach the person, everything else written to fds 1 and 2 (Python,
C, child processes) goes to the stage's log file; --verbose leaves the fds alone."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from phi4ray.presets import run_preset
from phi4ray.run import console
from phi4ray.run.overrides import apply_overrides
from phi4ray.run.stage import Stage, StageFailed, StageResult, run_stage

NOISE = """
def noise(tag):
    # output the way Ray's logs reach the driver: Python prints, raw fd writes, a child process
    print(f"{tag} python stdout", flush=True)
    print(f"{tag} python stderr", file=sys.stderr, flush=True)
    os.write(1, f"{tag} fd 1\\n".encode())
    os.write(2, f"{tag} fd 2\\n".encode())
    subprocess.run([sys.executable, "-c", f"print('{tag} child')"], check=True)
"""


def _noise(tag: str) -> None:
    scope = {"os": os, "sys": sys, "subprocess": subprocess}
    exec(NOISE, scope)
    scope["noise"](tag)


def _in_a_process(body: str, tmp_path: Path, verbose: bool = False) -> subprocess.CompletedProcess:
    """`body` in a fresh interpreter whose fds 1 and 2 are pipes, as under a terminal or a job
    runner (pytest's own capture would stand between sys.stdout and fd 1)."""
    script = (f"import os, subprocess, sys\nfrom pathlib import Path\nfrom phi4ray.run import console\n{NOISE}\n"
              f"console.install(console.Console(verbose={verbose}))\nlogs = Path({str(tmp_path)!r})\n{body}")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)


def test_logs_go_to_the_file_and_the_lines_for_a_person_to_the_console(tmp_path):
    r = _in_a_process("""
with console.logging_to(logs / "logs" / "stage.log"):
    noise("inside")
    console.say("a line for the person")
noise("after")
""", tmp_path)
    text = (tmp_path / "logs" / "stage.log").read_text()
    for where in ("python stdout", "python stderr", "fd 1", "fd 2", "child"):
        assert f"inside {where}" in text and f"inside {where}" not in r.stdout + r.stderr
        assert f"after {where}" in r.stdout + r.stderr and f"after {where}" not in text
    assert "a line for the person" in r.stdout and "a line for the person" not in text


def test_nested_logs_switch_files_and_back(tmp_path):
    r = _in_a_process("""
with console.logging_to(logs / "run.log"):
    print("before the stage", flush=True)
    with console.logging_to(logs / "stage.log"):
        os.write(1, b"in the stage\\n")
    os.write(2, b"after the stage\\n")
""", tmp_path)
    assert (tmp_path / "run.log").read_text() == "before the stage\nafter the stage\n"
    assert (tmp_path / "stage.log").read_text() == "in the stage\n"
    assert r.stdout == r.stderr == ""


def test_verbose_leaves_everything_on_the_console(tmp_path):
    r = _in_a_process("""
with console.logging_to(logs / "stage.log"):
    noise("verbose")
""", tmp_path, verbose=True)
    assert "verbose fd 1" in r.stdout and "verbose fd 2" in r.stderr and "verbose child" in r.stdout
    assert not (tmp_path / "stage.log").exists()


def test_a_stage_runs_under_its_log_and_a_failure_points_at_it(tmp_path, capfd):
    console.install(console.Console(verbose=False))
    try:
        _stages(tmp_path, capfd)
    finally:
        console.install(None)


def _stages(tmp_path, capfd):
    ctx = SimpleNamespace(run_dir=tmp_path, cfg=apply_overrides(run_preset("tiny"), []), options={})

    def works(ctx):
        _noise("ok-stage")
        return StageResult(counts={"rows": 3})

    def breaks(ctx):
        _noise("bad-stage")
        raise RuntimeError("the disk is full")

    run_stage(Stage(name="works", summary="s", run=works, sections=("seed",), headline=("rows",)), ctx)
    out = capfd.readouterr().out
    assert out.splitlines()[0].startswith("[     works] start") and str(tmp_path / "logs" / "works.log") in out
    assert '[     works] done in' in out and '{"rows": 3}' in out
    # (pytest's capture points sys.stdout past fd 1, so only the fd-level and child output is checked
    # here; tests above run the Python prints in a real process)
    assert "ok-stage fd" not in out and "ok-stage child" not in out
    assert "ok-stage child" in (tmp_path / "logs" / "works.log").read_text()
    with pytest.raises(StageFailed) as e:
        run_stage(Stage(name="breaks", summary="s", run=breaks, sections=("seed",)), ctx)
    assert e.value.log == tmp_path / "logs" / "breaks.log"
    assert console.tail(e.value.log, 2) == ["bad-stage fd 2", "bad-stage child"]


def test_tail_reads_only_the_end_of_a_large_log(tmp_path):
    log = tmp_path / "big.log"
    log.write_text("".join(f"line {i}\n" for i in range(200_000)))  # ~2 MB
    assert console.tail(log, 3) == ["line 199997", "line 199998", "line 199999"]
    assert console.tail(Path(tmp_path / "absent.log")) == []
