"""The code sandbox: normal runs, a hostile suite (each contained, the host carrying on), and the
code oracle. Hostile cases that bypass the in-process preamble (via `_socket`, `_io`, `posix`) are
only run where kernel isolation is in force; without it they would reach the host."""
from __future__ import annotations

import os
import socket
import tempfile
import threading
import time

import pytest

from phi4ray.verify import sandbox
from phi4ray.verify.sandbox import CodeOracle, SandboxLimits, extract_code, run_python

MODE = sandbox.isolation_mode()
NS = MODE.startswith("ns")
# RLIMIT_NPROC does not bind uid 0, which is what the program runs as outside the ns-root mode
NPROC_BINDS = os.geteuid() != 0 or MODE == "ns-root"
FAST = SandboxLimits(wall_s=3, cpu_s=2)
needs_ns = pytest.mark.skipif(not NS, reason="needs namespace isolation (unshare)")


def host_carries_on():
    r = run_python("print('still fine')", FAST)
    assert r.ok and r.stdout == "still fine\n", r


def sandboxed_pids(match=lambda argv: "phi4ray_sandbox" in argv):
    """Host pids whose argv satisfies `match` (by default: sandboxed interpreters)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if match(argv):
            pids.append(int(pid))
    return pids


def run_watched(code, limits, match=lambda argv: "phi4ray_sandbox" in argv):
    """Run in a thread while sampling the host's process table: (result, most seen at once)."""
    box, most = {}, 0
    t = threading.Thread(target=lambda: box.setdefault("r", run_python(code, limits)))
    t.start()
    while t.is_alive():
        most = max(most, len(sandboxed_pids(match)))
        time.sleep(0.05)
    return box["r"], most


def gone_soon(match=lambda argv: "phi4ray_sandbox" in argv, within_s=2.0):
    deadline = time.monotonic() + within_s
    while sandboxed_pids(match) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not sandboxed_pids(match)


# --- normal runs ---------------------------------------------------------------------------------

def test_normal_code_stdout_stdin_files():
    code = "import json, collections\nprint(input()[::-1])\nprint(open('data/x.txt').read())\nprint(sum(range(10)))"
    r = run_python(code, FAST, stdin="abc\n", files={"data/x.txt": "hello"})
    assert r.ok and r.returncode == 0, r
    assert r.stdout == "cba\nhello\n45\n" and r.stderr == ""
    assert r.isolation == sandbox.ISOLATION[MODE] and r.wall_s < 3


def test_errors():
    r = run_python("def f(:\n  pass", FAST)
    assert r.status == "error" and "SyntaxError" in r.stderr
    r = run_python("raise SystemExit(3)", FAST)
    assert r.status == "error" and r.returncode == 3
    with pytest.raises(ValueError):
        run_python("pass", FAST, files={"../escape.txt": "x"})


# --- hostile suite -------------------------------------------------------------------------------

def test_network_is_unreachable():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    code = f"""
import socket
for addr in [("127.0.0.1", {port}), ("1.1.1.1", 53)]:
    try:
        socket.create_connection(addr, timeout=1); print("CONNECTED", addr)
    except OSError as e:
        print("guard", type(e).__name__)
"""
    if NS:  # past the preamble: the raw socket module, stopped by the empty network namespace
        code += f"""
import _socket
for addr in [("127.0.0.1", {port}), ("1.1.1.1", 53)]:
    s = _socket.socket(); s.settimeout(1)
    try:
        s.connect(addr); print("CONNECTED", addr)
    except OSError as e:
        print("kernel", type(e).__name__)
"""
    r = run_python(code, FAST)
    assert r.ok and "CONNECTED" not in r.stdout and r.stdout.count("guard PermissionError") == 2, r
    if NS:
        assert r.stdout.count("kernel OSError") == 2, r
    srv.setblocking(False)
    with pytest.raises(BlockingIOError):
        srv.accept()  # nothing ever reached the listener
    srv.close()
    host_carries_on()


def test_files_outside_the_sandbox_are_unreadable(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-42")
    targets = [str(secret), sandbox.__file__, os.path.expanduser("~/.bashrc")]
    code = f"""
import _io
for p in {targets!r}:
    try:
        print(open(p).read())
    except OSError as e:
        print("guard", type(e).__name__)
    try:
        print(_io.open(p).read()) if {NS} else None
    except OSError as e:
        print("kernel", type(e).__name__)
"""
    r = run_python(code, FAST)
    assert r.ok and "TOPSECRET" not in r.stdout and "sandbox" not in r.stdout, r
    if NS:  # the guard lets /tmp and /work through (they are the sandbox's own), but nothing is there
        assert r.stdout.count("kernel FileNotFoundError") == 3, r
        assert all(line in ("guard PermissionError", "guard FileNotFoundError", "kernel FileNotFoundError")
                   for line in r.stdout.splitlines()), r
    else:
        assert r.stdout.count("guard PermissionError") == 3, r
    host_carries_on()


def test_environment_secrets_are_invisible(monkeypatch):
    monkeypatch.setenv("PHI4RAY_FAKE_SECRET", "hunter2-env-secret")
    code = "import os\nprint(dict(os.environ))\n"
    if NS:
        code += "import _io\nfor p in ['/proc/1/environ', '/proc/self/environ']:\n" \
                "    try: print(_io.open(p).read())\n    except OSError as e: print(type(e).__name__)\n"
    r = run_python(code, FAST)
    assert r.ok and "hunter2" not in r.stdout + r.stderr and "PHI4RAY_FAKE_SECRET" not in r.stdout, r
    assert "'HOME'" in r.stdout


@pytest.mark.skipif(not NPROC_BINDS, reason="RLIMIT_NPROC does not bind uid 0 in this mode")
def test_fork_bomb_is_contained():
    limits = SandboxLimits(wall_s=3, cpu_s=2, max_processes=16)
    counted = "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n" \
              "            time.sleep(60); os._exit(0)\n        n += 1\nexcept OSError as e:\n" \
              "    print(n, type(e).__name__)\n"
    r = run_python(counted, limits)
    forks, err = r.stdout.split()
    assert r.ok and err == "BlockingIOError" and int(forks) < 16, r
    assert gone_soon()  # its 15 sleeping children died with it
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r, most = run_watched(bomb, SandboxLimits(wall_s=2, cpu_s=2, max_processes=16))
    assert r.status == "timeout" and 0 < most <= 16, (r, most)
    assert gone_soon()  # the host's process table is back to where it was
    host_carries_on()


def test_memory_hog():
    r = run_python("b = bytearray(4 * 1024**3)\nprint('allocated')", FAST)
    assert r.status in ("memory", "killed") and "allocated" not in r.stdout, r
    host_carries_on()


def test_infinite_loop_times_out():
    r = run_python("while True:\n    pass", SandboxLimits(wall_s=1.5, cpu_s=10))
    assert r.status == "timeout" and r.returncode is None and 1.5 <= r.wall_s < 3, r
    assert gone_soon()
    host_carries_on()


def test_cpu_burn_is_stopped_by_the_cpu_limit():
    r = run_python("while True:\n    pass", SandboxLimits(wall_s=6, cpu_s=1))
    assert r.status == "cpu" and r.wall_s < 5, r
    host_carries_on()


def test_huge_file_is_stopped_and_the_temp_dir_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where run_python makes its temp dir
    code = "import os\ntry:\n    with open('big', 'wb') as f:\n        for _ in range(100):\n" \
           "            f.write(b'x' * 2**20)\nexcept OSError as e:\n    print(e.errno, os.path.getsize('big'))"
    r = run_python(code, SandboxLimits(wall_s=3, cpu_s=2, file_size_mb=1))
    assert r.ok and r.stdout.split() == ["27", str(2**20)], r  # EFBIG at exactly 1 MiB
    assert list(tmp_path.iterdir()) == []
    host_carries_on()


def test_killing_the_parent_leaves_the_host_alive():
    code = "import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\n" \
           "except OSError as e:\n    print('guard', type(e).__name__, flush=True)\n"
    if NS:  # past the preamble: init of the pid namespace ignores it, the host is out of reach
        code += "import posix\nfor pid in (os.getppid(), -1):\n    try:\n        posix.kill(pid, 9)\n" \
                "    except OSError:\n        pass  # ESRCH: no one else to signal\nprint('alive', flush=True)\n"
    # the parent's group: the host's outside namespaces (refused), the run's own inside (it dies)
    code += "os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\nprint('not reached')\n"
    r = run_python(code, FAST)
    assert r.stdout.startswith("guard PermissionError\n") and "not reached" not in r.stdout, r
    if NS:
        assert "alive" in r.stdout and r.status == "killed", r
    else:
        assert r.status == "error" and "PermissionError" in r.stderr, r
    host_carries_on()


def test_grandchildren_die_with_the_run():
    # one stays in the process group, one escapes it with setsid (only namespaces catch that one)
    code = "import subprocess, time\nsubprocess.Popen(['sleep', '987.125'])\n" \
           f"subprocess.Popen(['sleep', '987.126'], start_new_session={NS})\ntime.sleep(1)\nprint('spawned')"

    def sleeper(argv):
        return argv[0] == "sleep" and argv[1:2] in (["987.125"], ["987.126"])

    r, most = run_watched(code, FAST, sleeper)
    assert r.ok and r.stdout == "spawned\n" and most == 2, (r, most)
    assert gone_soon(sleeper)
    host_carries_on()


def test_stdout_flood_is_truncated():
    limits = SandboxLimits(wall_s=1.5, cpu_s=2, max_output_bytes=1000)
    r = run_python("import sys\nsys.stdout.write('x' * 10**6)", limits)
    assert r.ok and r.stdout == "x" * 1000 and r.stdout_dropped == 10**6 - 1000, r
    r = run_python("import sys\nwhile True:\n    sys.stdout.write('y' * 65536)", limits)
    assert r.status == "timeout" and len(r.stdout) == 1000 and r.stdout_dropped > 10**6, r
    host_carries_on()


@needs_ns
def test_no_privileges_and_a_read_only_system():
    code = "import os, posix\nfor f in (lambda: os.chroot('.'), lambda: posix.open(os.__file__, posix.O_WRONLY),\n" \
           "          lambda: posix.mkdir('/usr/evil')):\n    try:\n        f(); print('ALLOWED')\n" \
           "    except OSError as e:\n        print(type(e).__name__)\n"
    r = run_python(code, FAST)
    assert r.ok and "ALLOWED" not in r.stdout and len(r.stdout.split()) == 3, r


def test_preamble_only_mode():
    """What is left without namespaces: the preamble's guards, rlimits and a clean environment."""
    code = "import os, socket\nprint(os.getcwd().endswith('/work'), sorted(os.environ))\n" \
           "for f in (lambda: socket.socket(), lambda: open('/etc/hostname'), lambda: os.kill(os.getppid(), 9)):\n" \
           "    try:\n        f(); print('ALLOWED')\n    except OSError as e:\n        print(type(e).__name__)\n" \
           "open('out.txt', 'w').write('ok')\nprint(open('out.txt').read())"
    r = sandbox.run_in_mode(code, FAST, "", None, "preamble")
    assert r.ok and r.isolation == sandbox.ISOLATION["preamble"], r
    assert r.stdout.split("\n")[1:] == ["PermissionError"] * 3 + ["ok", ""], r
    assert r.stdout.startswith("True ['HOME', 'LANG', 'PATH', 'TMPDIR']")


# --- code extraction and the oracle --------------------------------------------------------------

def test_extract_code():
    assert extract_code("a\n```python\nx = 1\n```\nb\n```py\nx = 2\n```\n```\nbare\n```") == "x = 2\n"
    assert extract_code("```\nbare = 1\n```") == "bare = 1\n"
    assert extract_code("```js\nlet x\n```") is None
    assert extract_code("no code here") is None


def test_code_oracle():
    oracle = CodeOracle(limits=SandboxLimits(wall_s=2, cpu_s=2))
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
    assert oracle("Here you go:\n```python\ndef add(a, b):\n    return a + b\n```", tests) is True
    assert oracle("```python\ndef add(a, b):\n    return a - b\n```", tests) is False
    assert oracle("def add(a, b): return a + b", tests) is False  # no code block
    assert oracle("```python\ndef add(a, b):\n    while True: pass\n```", tests) is False
