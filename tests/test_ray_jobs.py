"""Stages as Ray jobs on a real `ray start --head`, and the autoscaler adding nodes when a stage asks
for more workers than the cluster has.

Every head here is our own: its own ports, temp dir and auth token, started with `--block` in its
own process session and stopped by signalling that one process. `ray stop` is never used: it kills
every Ray process on the machine (the conftest session cluster of this very pytest run included).
Nothing here calls `ray.init` in this process either: a session fixture may already hold it, so
clients talk HTTP to the dashboard (jobs, state API) and drivers run as Ray jobs.
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

from phi4ray.manifest import manifest_path
from tests.conftest import free_port

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent       # `ray` and the `python` a job's entrypoint runs
EXCLUDES = [".venv", "runs", ".git", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info"]
INIT_ARGS = ["--preset", "tiny", "model.n_layers=1"]  # the cheapest real stage: tokenizer + 1-layer model
SUMMARY = "[      init] done in"                      # phi4ray.cli's line for a stage that ran
OBJECT_STORE = 256 * 2**20   # per node: the default (30% of RAM each) is a lot on a shared machine
IDLE_TIMEOUT_MIN = 0.25      # the fake cluster gives idle nodes back after 15 s


class LocalHead:
    """`ray start --head --block` with free ports, a short temp dir (Ray's unix sockets live under
    it; paths are limited to 107 bytes) and token auth with a token of its own (Ray 2.60 turns
    token auth on by default; we neither read nor write ~/.ray/auth_token)."""

    def __init__(self, num_cpus: int, worker_node_types: dict | None = None):
        self.num_cpus, self.worker_node_types = num_cpus, worker_node_types
        self.tmp = Path(tempfile.mkdtemp(prefix="p4r-", dir="/tmp"))
        self.port, self.dashboard_port = free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.headers = {"Authorization": f"Bearer {(token := secrets.token_hex(32))}"}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=f"{VENV_BIN}:{os.environ['PATH']}")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LocalHead":
        cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={self.port}",
               f"--num-cpus={self.num_cpus}", f"--temp-dir={self.tmp}", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--object-store-memory={OBJECT_STORE}", "--disable-usage-stats"]
        env = dict(self.env)
        if self.worker_node_types is not None:
            config = self.tmp / "autoscaling.json"
            config.write_text(json.dumps(fake_cluster_config(self.port, self.num_cpus, self.worker_node_types)))
            cmd.append(f"--autoscaling-config={config}")
            # what AutoscalingCluster.start sets: the fake provider's switch, a 1 s autoscaler loop
            env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        # a session of its own: Ray's reaper kills its whole process group when `ray start` dies
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.tmp, stdin=subprocess.DEVNULL,
                                     stdout=open(self.tmp / "head.log", "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            self.client = _wait_for(self._client, 90, "the dashboard's job server", self)
            # the state API lists no node for a few seconds after the dashboard answers
            _wait_for(lambda: self.alive_nodes() or None, 30, "the head in the state API", self)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _client(self):
        from ray.job_submission import JobSubmissionClient

        try:
            return JobSubmissionClient(self.dashboard, headers=self.headers)
        except Exception:  # not up yet (connection refused, 503 while modules load)
            return None

    def log_tail(self, n: int = 3000) -> str:
        return (self.tmp / "head.log").read_text(errors="replace")[-n:]

    def alive_nodes(self) -> int:
        from ray.util.state.api import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        nodes = StateApiClient(self.dashboard, headers=self.headers).list(
            StateResource.NODES, options=ListApiOptions(filters=[("state", "=", "ALIVE")]),
            raise_on_missing_output=False)
        return len(nodes)

    def session_processes(self) -> list:
        """Processes still in the head's session: all started by it, none by anyone else."""
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
            self.proc.terminate()  # `ray start --block` stops its node's processes on SIGTERM
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            # stragglers (the dashboard's forkserver) exit once their parent is gone; after a grace
            # period whatever is left of this session is stopped by pid
            _, alive = psutil.wait_procs(self.session_processes(), timeout=10)
            for p in alive:
                p.kill()
            psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)


def fake_cluster_config(gcs_port: int, head_cpus: int, worker_node_types: dict) -> dict:
    """The autoscaler config `ray.cluster_utils.AutoscalingCluster` builds for its fake multi-node
    provider (worker nodes are real raylets on this machine, started by the autoscaler). We cannot
    use the class itself: its base file, fake_multi_node/example.yaml, is missing from the 2.60
    wheel, and its start()/shutdown() run `ray stop --force`. The provider is told our GCS port
    (its default is 6379) and launches several nodes per request, as a cloud provider does."""
    from ray._private.services import get_node_ip_address

    no_commands = dict.fromkeys(["initialization_commands", "setup_commands", "head_setup_commands",
                                 "worker_setup_commands", "head_start_ray_commands",
                                 "worker_start_ray_commands", "cluster_synced_files", "rsync_exclude",
                                 "rsync_filter"], [])
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


def _wait_for(probe, timeout: float, what: str, head: LocalHead):
    t_end = time.time() + timeout
    while time.time() < t_end:
        if head.proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.proc.returncode}:\n{head.log_tail()}")
        if (got := probe()) is not None:
            return got
        time.sleep(0.5)
    raise TimeoutError(f"{what} not up after {timeout:.0f}s:\n{head.log_tail()}")


def _wait_job(head: LocalHead, job_id: str, timeout: float, on_poll=None):
    """Poll until the job is terminal; on_poll() runs each round (it samples the cluster)."""
    t_end = time.time() + timeout
    while time.time() < t_end:
        if on_poll:
            on_poll()
        status = head.client.get_job_status(job_id)
        if status.is_terminal():
            return status
        time.sleep(0.5)
    head.client.stop_job(job_id)
    raise TimeoutError(f"job {job_id} still {status} after {timeout:.0f}s:\n{head.client.get_job_logs(job_id)[-3000:]}")


@pytest.fixture(scope="module")
def job_head():
    """One 2-CPU head with the job server for the job tests (a stage's driver needs no CPU slot)."""
    head = LocalHead(num_cpus=2)
    with head:
        yield head
    assert not head.session_processes(), "processes outlived the head"


def _assert_init_ran(run_dir: Path) -> None:
    m = json.loads(manifest_path(run_dir, "init").read_text())
    assert m["complete"] and m["config"]["model"]["n_layers"] == 1  # the job's overrides reached the stage
    assert (Path(m["outputs"]["model"]) / "model.safetensors").is_file()
    assert Path(m["outputs"]["model"]) == run_dir / "models" / "init"


def test_jobs_do_not_shadow_stdlib_modules():
    """`python jobs/X.py` puts jobs/ first on sys.path: a jobs/tokenize.py is imported in place of
    the standard library's tokenize (linecache -> inspect -> dataclasses import it), and every
    entrypoint then dies in a circular import before phi4ray loads."""
    shadowing = sorted(p.name for p in (ROOT / "jobs").glob("*.py") if p.stem in sys.stdlib_module_names)
    assert not shadowing, f"jobs/ files named like standard-library modules: {shadowing}"


def test_stage_submitted_with_job_client_runs_and_writes_its_manifest(job_head, tmp_path):
    run = tmp_path / "run"
    entry = " ".join(["python", "jobs/init.py", "--run-dir", str(run), *INIT_ARGS])
    job = job_head.client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES})
    status = _wait_job(job_head, job, timeout=90)
    logs = job_head.client.get_job_logs(job)
    assert status == "SUCCEEDED", logs[-3000:]
    assert SUMMARY in logs and f"phi4ray: ran init in" in logs
    _assert_init_ran(run)
    # a bad override fails the job with the CLI's exit code and message, before any work
    bad = job_head.client.submit_job(entrypoint=entry + " model.n_layers=0",
                                     runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES})
    assert _wait_job(job_head, bad, timeout=60) == "FAILED"
    info = job_head.client.get_job_info(bad)
    assert info.driver_exit_code == 2 and "config error" in job_head.client.get_job_logs(bad)


def test_stage_submitted_with_ray_job_submit_cli(job_head, tmp_path):
    run = tmp_path / "run"
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", job_head.dashboard, "--working-dir", ".",
           "--", "python", "jobs/init.py", "--run-dir", str(run), *INIT_ARGS]
    out = subprocess.run(cmd, cwd=ROOT, env=job_head.env, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert SUMMARY in text and "succeeded" in text
    _assert_init_ran(run)


PRETRAIN_ARGS = ["--preset", "tiny", "model.n_layers=1", "data.seq_len=32", "pretrain.steps=4",
                 "pretrain.batch_size=4", "pretrain.micro_batch_size=2", "pretrain.warmup_steps=1",
                 "pretrain.checkpoint_every=2", "pretrain.log_every=2"]


def test_pretrain_asking_for_two_workers_makes_two_nodes_appear(tmp_path):
    """A head with no CPUs and a CPU node type (1 CPU, 0..3 nodes). The real `pretrain` stage,
    submitted as a Ray job, asks Ray Train for 2 workers of 1 CPU: the autoscaler launches exactly
    the 2 nodes they need, training runs on both, and the idle nodes go away afterwards."""
    from phi4ray.init_model import run_init
    from phi4ray.overrides import apply_overrides
    from phi4ray.presets import run_preset
    from tests.test_trainer import SEQ, _write_rows

    run = tmp_path / "run"
    cfg = apply_overrides(run_preset("tiny"), PRETRAIN_ARGS[2:])
    assert cfg.data.seq_len == SEQ and cfg.num_workers == 2
    run_init(run, cfg)                   # the stage before: the model pretraining starts from
    _write_rows(run / "tokens", n=32)    # packed rows in the tokenize stage's layout
    node_type = {"cpu_worker": {"resources": {"CPU": 1, "object_store_memory": OBJECT_STORE},
                                "node_config": {}, "min_workers": 0, "max_workers": 3}}
    with LocalHead(num_cpus=0, worker_node_types=node_type) as head:
        assert head.alive_nodes() == 1
        entry = " ".join(["python", "jobs/pretrain.py", "--run-dir", str(run), *PRETRAIN_ARGS])
        job = head.client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES})
        seen = []
        t0 = time.time()
        status = _wait_job(head, job, timeout=150, on_poll=lambda: seen.append((time.time() - t0, head.alive_nodes())))
        logs = head.client.get_job_logs(job)
        assert status == "SUCCEEDED", logs[-3000:]
        print(seen)
        assert max(n for _, n in seen) == 3, seen
        t_done = time.time()
        _wait_for(lambda: True if head.alive_nodes() == 1 else None, 60, "scale-down to the head", head)
        print("scale down after", time.time() - t_done)
    assert "[  pretrain] done in" in logs
    metrics = [json.loads(line) for line in (run / "checkpoints" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4] and all(m["world_size"] == 2 for m in metrics)
    assert json.loads(manifest_path(run, "pretrain").read_text())["complete"]
    assert (run / "models" / "pretrain" / "model.safetensors").is_file()
