"""The marks are the truth: a test that starts Ray or vLLM carries `ray` / `vllm`, and Ray-free tests
run first.

While each unmarked test runs, a thread watches this process's descendants; a new Ray head (`raylet`,
`gcs_server`) or vLLM engine (`EngineCore`) fails the test, whether the test started it in-process
or through a subprocess (`phi4ray run`, `ray job submit`). Ray-free tests run before any marked
one, so no session cluster is up yet for an unmarked test to use unnoticed.

`--reverse` runs the tests in reverse order (every test must pass in either).
PHI4RAY_TEST_AUDIT=FILE records each test's duration and what it started (JSON lines) instead of
failing: how the marks were set.
"""
from __future__ import annotations

import json
import os
import threading
import time

import psutil
import pytest

RAY_PROCS = ("raylet", "gcs_server")
VLLM_PROCS = ("VLLM::", "EngineCore")  # the engine core process calls itself VLLM::EngineCore
POLL_S = 0.25


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name() + " " + " ".join(proc.cmdline()[:2])
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


class Watch:
    """What new descendants a test started: a set of 'ray' / 'vllm'."""

    def __init__(self):
        self.before = {p.pid for p in _descendants()}
        self.seen: set[str] = set()
        self.named: set[int] = set()  # pids already looked at: a name is read once per process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            for proc in _descendants():
                if proc.pid in self.before or proc.pid in self.named:
                    continue
                self.named.add(proc.pid)
                name = _name(proc)
                if any(p in name for p in RAY_PROCS):
                    self.seen.add("ray")
                if any(p in name for p in VLLM_PROCS):
                    self.seen.add("vllm")
            if self._stop.wait(POLL_S):
                return

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join()
        return self.seen


def marks_of(item) -> set[str]:
    return {m.name for m in item.iter_markers() if m.name in ("ray", "vllm")}


# session fixtures that start Ray or vLLM, and the marks a test using them needs
FIXTURE_MARKS = {"ray_cluster": {"ray"}, "sampler_app": {"ray", "vllm"}, "vllm_engine": {"vllm"}}


def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true",
                     help="run the tests in reverse order: no test may depend on what an earlier one left")


def pytest_collection_modifyitems(config, items):
    unmarked = []
    for item in items:
        need = set().union(*(FIXTURE_MARKS.get(f, set()) for f in getattr(item, "fixturenames", ())))
        if need - marks_of(item):
            unmarked.append(f"{item.nodeid} uses a fixture that starts {' and '.join(sorted(need))} but lacks "
                            f"{' '.join('@pytest.mark.' + m for m in sorted(need - marks_of(item)))}")
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))
    # Ray-free tests first (stable: each group keeps the files' order)
    items.sort(key=lambda it: bool(marks_of(it)))
    if config.getoption("reverse"):
        items.reverse()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    marks = marks_of(item)
    audit = os.environ.get("PHI4RAY_TEST_AUDIT")
    if "ray" in marks and not audit:  # a marked test may start anything
        yield
        return
    watch, t0 = Watch(), time.perf_counter()
    outcome = yield
    seen = watch.stop()
    if audit:
        with open(audit, "a") as f:
            f.write(json.dumps({"test": item.nodeid, "s": round(time.perf_counter() - t0, 2),
                                "marks": sorted(marks), "started": sorted(seen)}) + "\n")
        return
    missing = seen - marks
    if missing and outcome.excinfo is None:
        pytest.fail(f"{item.nodeid} started {' and '.join(sorted(missing))} without "
                    f"{' '.join('@pytest.mark.' + m for m in sorted(missing))}", pytrace=False)
