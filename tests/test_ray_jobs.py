"""Stages as Ray jobs on a real `ray start --head`, and the autoscaler adding nodes when a stage asks
for more workers than the cluster has.

Every head here is our own: its own ports, temp dir and auth token, started with `--block` in its
own process session and stopped by signalling that one process. `ray stop` is never used: it kills
every Ray process on the machine (the conftest session cluster of this very pytest run included).
Nothing here calls `ray.init` in this process either (a session fixture may hold it already):
clients talk HTTP to the dashboard (job server, state API) and every driver runs as a Ray job.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from phi4ray.run.manifest import manifest_path
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent        # `ray`, and the `python` a job's entrypoint finds
EXCLUDES = [".venv", "runs", ".git", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info"]
OBJECT_STORE = 256 * 2**20    # per node: Ray's default (30% of RAM, each) is a lot on a shared machine
# the fake cluster keeps idle nodes for longer than the test: a node that is up before its sibling
# must not be given back while the pair is still wanted (at 0.25 min, nodes went 10-13 s after a job)
IDLE_TIMEOUT_MIN = 5
INIT_ARGS = ["--preset", "tiny", "model.n_layers=1"]   # the cheapest real stage: tokenizer + 1-layer model
# pretrain on 2 Ray Train workers (the preset's train_workers): a 100K-parameter model (the rows'
# ids stay below its 1024-token vocabulary), 2 steps of 32-token rows, 1 checkpoint
PRETRAIN_ARGS = ["--preset", "tiny", "model.n_layers=1", "model.dim=64", "model.n_heads=2", "model.n_kv_heads=1",
                 "model.ffn_dim=128", "model.vocab_size=1024", "data.seq_len=32", "pretrain.steps=2",
                 "pretrain.batch_size=4", "pretrain.micro_batch_size=2", "pretrain.warmup_steps=1",
                 "pretrain.checkpoint_every=2", "pretrain.log_every=1"]


def summary_line(stage: str) -> str:
    return f"[{stage:>10}] done in"   # what phi4ray.run.stage.run_stage prints for a stage that ran


class LocalHead:
    """`ray start --head --block` with free ports, a short temp dir (Ray's unix socket paths live
    under it and are limited to 107 bytes) and token auth with a token of its own: Ray 2.60 turns
    token auth on for a new head whenever ~/.ray/auth_token exists; we neither read nor write it.

    worker_node_types: autoscale with Ray's fake multi-node provider (worker nodes are raylets on
    this machine, launched by the autoscaler on the head)."""

    def __init__(self, num_cpus: int, worker_node_types: dict | None = None):
        self.num_cpus, self.worker_node_types = num_cpus, worker_node_types
        self.tmp = Path(tempfile.mkdtemp(prefix="p4r-", dir="/tmp"))
        self.port, self.dashboard_port = free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        token = secrets.token_hex(32)
        self.headers = {"Authorization": f"Bearer {token}"}
        # what a process needs to reach this head, and nothing of any other Ray (RAY_ADDRESS...)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=f"{VENV_BIN}:{os.environ['PATH']}")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LocalHead":
        cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={self.port}",
               f"--num-cpus={self.num_cpus}", f"--object-store-memory={OBJECT_STORE}", f"--temp-dir={self.tmp}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               "--disable-usage-stats"]
        env = dict(self.env)
        if self.worker_node_types is not None:
            config = self.tmp / "autoscaling.json"
            config.write_text(json.dumps(fake_cluster_config(self.port, self.num_cpus, self.worker_node_types)))
            cmd.append(f"--autoscaling-config={config}")
            # as AutoscalingCluster.start: the fake provider's switch and a 1 s autoscaler loop
            env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        # a session of its own: Ray's reaper kills its whole process group if `ray start` dies
        with open(self.tmp / "head.log", "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # bounds for a busy 2-core machine: both take seconds when it is quiet
            self.client = self._wait_for(self._job_client, 120, "the dashboard's job server")
            # the state API lists no node for a few seconds after the dashboard answers
            self._wait_for(lambda: self.alive_nodes(timeout=5) or None, 60, "the head in the state API")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _job_client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard, headers=self.headers)

    def _wait_for(self, probe, timeout: float, what: str):
        """probe()'s first result that is not None; an exception counts as not yet (connection
        refused, a 503 while the dashboard's modules load)."""
        t_end, error = time.time() + timeout, None
        while time.time() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if (got := probe()) is not None:
                    return got
            except Exception as e:
                error = e
            time.sleep(0.5)
        raise TimeoutError(f"{what}: not there after {timeout:.0f}s (last error: {error!r})\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return (self.tmp / "head.log").read_text(errors="replace")[-n:]

    def alive_nodes(self, timeout: float = 60) -> int:
        """Alive nodes by the state API. A refused connection is retried: on a loaded 2-core
        machine the dashboard has refused one poll while a job ran (a CI run), and a missed sample
        is no evidence about the nodes. A head that stays unreachable still fails, with its log."""
        from ray.util.state.api import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        def alive() -> int:
            return len(StateApiClient(self.dashboard, headers=self.headers).list(
                StateResource.NODES, options=ListApiOptions(filters=[("state", "=", "ALIVE")]),
                raise_on_missing_output=False))

        return self._wait_for(alive, timeout, "the state API")

    def submit(self, *argv: str) -> str:
        """`python <argv>` as a job, in a copy of this repo (the job's working_dir)."""
        return self.client.submit_job(entrypoint=" ".join(["python", *argv]),
                                      runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES})

    def wait_job(self, job_id: str, timeout: float, on_poll=None) -> str:
        """The job's terminal status; on_poll() runs every round (to sample the cluster)."""
        t_end = time.time() + timeout
        while time.time() < t_end:
            if on_poll:
                on_poll()
            if (status := self.client.get_job_status(job_id)).is_terminal():
                return status
            time.sleep(0.5)
        self.client.stop_job(job_id)
        raise TimeoutError(f"job {job_id} not done after {timeout:.0f}s:\n{self.client.get_job_logs(job_id)[-3000:]}")

    def session_processes(self) -> list:
        """Processes in the head's session: every one of them started by it, none by anyone else."""
        import psutil

        mine = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.proc.pid:
                    mine.append(p)
            except (ProcessLookupError, PermissionError):
                pass
        return mine

    def __exit__(self, *exc) -> None:
        import psutil

        if self.proc is not None:
            self.proc.terminate()  # `ray start --block` stops its own node's processes on SIGTERM...
            try:                   # ...within seconds, unless its raylet waits ~30 s on a lingering actor
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            # what it has not stopped, we do, by pid: itself if still busy, the worker nodes the
            # autoscaler started (raylets, agents, workers), the dashboard's module processes
            left = self.session_processes()
            for p in left:
                p.terminate()
            _, alive = psutil.wait_procs(left, timeout=5)
            for p in alive:
                p.kill()
            psutil.wait_procs(alive, timeout=10)
            self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def fake_cluster_config(gcs_port: int, head_cpus: int, worker_node_types: dict) -> dict:
    """The autoscaler config `ray.cluster_utils.AutoscalingCluster` builds for Ray's fake multi-node
    provider. The class itself is unusable here: its base file (fake_multi_node/example.yaml) is
    missing from the 2.60 wheel, and its start() and shutdown() run `ray stop --force`. Unlike it,
    we tell the provider our GCS port (it assumes 6379) and let it launch several nodes per
    request, as a cloud provider does."""
    from ray._private.services import get_node_ip_address

    no_commands = dict.fromkeys(["initialization_commands", "setup_commands", "head_setup_commands",
                                 "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                                 "cluster_synced_files", "rsync_exclude", "rsync_filter"], [])
    return {
        "cluster_name": "phi4ray-fake", "max_workers": sum(t["max_workers"] for t in worker_node_types.values()),
        "provider": {"type": "fake_multinode", "gcs_address": f"{get_node_ip_address()}:{gcs_port}",
                     "launch_multiple": True, "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "available_node_types": {"ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {},
                                                      "max_workers": 0}, **worker_node_types},
        "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MIN, "file_mounts": {}, "file_mounts_sync_continuously": False,
        **no_commands,
    }


def test_jobs_do_not_shadow_standard_library_modules():
    """`python jobs/X.py` puts jobs/ first on sys.path: a jobs/tokenize.py is imported in place of
    the standard library's tokenize (dataclasses -> inspect -> linecache import it), and every job
    entrypoint then dies in a circular import before phi4ray has loaded."""
    shadowing = sorted(p.name for p in (ROOT / "jobs").glob("*.py") if p.stem in sys.stdlib_module_names)
    assert not shadowing, f"jobs/ files named like standard-library modules: {shadowing}"


@pytest.mark.slow
@pytest.mark.ray
def test_pretrain_asking_for_two_workers_makes_two_nodes_appear(tmp_path):
    """A head with no CPUs and a node type of 1 CPU (0..3 nodes). The real `pretrain` stage,
    submitted as a Ray job, asks Ray Train for 2 workers of 1 CPU: the autoscaler launches the 2
    nodes they need and training runs across both."""
    from actors.context import RunContext
    from actors.data import tokenize
    from phi4ray.model import init_model
    from phi4ray.presets import run_preset
    from phi4ray.run import manifest
    from phi4ray.run.overrides import apply_overrides
    from phi4ray.run.stage import run_stage, stage_key
    from tests.test_trainer import SEQ, _write_rows

    run = tmp_path / "run"
    cfg = apply_overrides(run_preset("tiny"), PRETRAIN_ARGS[2:])
    assert cfg.data.seq_len == SEQ and cfg.num_workers == 2
    with RunContext.local(run, cfg) as ctx:
        run_stage(init_model.STAGE, ctx)  # the stage before: the model pretraining starts from
    _write_rows(run / "tokens", n=16)    # packed rows in the tokenize stage's layout, recorded as its output
    manifest.write_manifest(run, "tokenize", {}, key=stage_key(tokenize.STAGE, cfg, run), inputs={}, outputs={},
                            counts={"sequences": 16}, timings={})
    node_types = {"cpu_worker": {"resources": {"CPU": 1, "object_store_memory": OBJECT_STORE},
                                 "node_config": {}, "min_workers": 0, "max_workers": 3}}
    with LocalHead(num_cpus=0, worker_node_types=node_types) as head:
        assert head.alive_nodes() == 1   # min_workers 0: the head alone
        job = head.submit("jobs/pretrain.py", "--run-dir", str(run), *PRETRAIN_ARGS)
        t0, seen = time.time(), []       # (seconds since submission, alive nodes) while the job runs
        status = head.wait_job(job, timeout=240, on_poll=lambda: seen.append((round(time.time() - t0, 1),
                                                                              head.alive_nodes())))
        logs = head.client.get_job_logs(job)
        assert status == "SUCCEEDED", logs[-3000:]
        # 2 workers of 1 CPU need 2 nodes (a worker that dies at start-up may cost one more)
        assert seen[0][1] == 1 and max(n for _, n in seen) >= 3, seen
    assert summary_line("pretrain") in logs
    metrics = [json.loads(line) for line in (run / "checkpoints" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["world_size"] == 2 for m in metrics)
    assert json.loads(manifest_path(run, "pretrain").read_text())["complete"]
    assert (run / "models" / "pretrain" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def job_head():
    """One 2-CPU head with its job server for the job tests (a stage's driver takes no CPU slot)."""
    head = LocalHead(num_cpus=2)
    with head:
        yield head
    assert not head.session_processes(), "processes outlived the head"


def _assert_init_ran(run_dir: Path) -> None:
    m = json.loads(manifest_path(run_dir, "init").read_text())
    assert m["complete"] and m["config"]["model"]["n_layers"] == 1  # the job's override reached the stage
    assert Path(m["outputs"]["model"]) == run_dir / "models" / "init"
    assert (run_dir / "models" / "init" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.ray
def test_stage_submitted_with_the_job_client(job_head, tmp_path):
    run = tmp_path / "run"
    job = job_head.submit("jobs/init.py", "--run-dir", str(run), *INIT_ARGS)
    status = job_head.wait_job(job, timeout=120)
    logs = job_head.client.get_job_logs(job)
    assert status == "SUCCEEDED", logs[-3000:]
    assert summary_line("init") in logs and "phi4ray: ran init in" in logs
    _assert_init_ran(run)
    # a bad override fails the job with the CLI's exit code and message, before any work
    bad = job_head.submit("jobs/init.py", "--run-dir", str(tmp_path / "bad"), *INIT_ARGS, "model.n_layers=0")
    assert job_head.wait_job(bad, timeout=60) == "FAILED"
    assert job_head.client.get_job_info(bad).driver_exit_code == 2
    assert "config error" in job_head.client.get_job_logs(bad) and not (tmp_path / "bad").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_stage_submitted_with_ray_job_submit(job_head, tmp_path):
    """The command a user types; it tails the logs and exits 0 once the job has succeeded."""
    run = tmp_path / "run"
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", job_head.dashboard, "--working-dir", ".",
           "--", "python", "jobs/init.py", "--run-dir", str(run), *INIT_ARGS]
    out = subprocess.run(cmd, cwd=ROOT, env=job_head.env, capture_output=True, text=True, timeout=150)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert summary_line("init") in text and "succeeded" in text
    _assert_init_ran(run)
