"""Run untrusted Python (model-written solutions and their tests) in a throw-away sandbox.

Synthesis keeps only code that passes its tests, PTS scores partial solutions with `CodeOracle`,
and evaluation runs HumanEval-style tests: all of them execute model output, so every run gets a
fresh process tree, a fresh directory and hard limits, and the caller carries on whatever it does.
Plain Python, no Ray.

What every run gets:
- its own session and process group (killed as a whole at the wall-clock limit) and a temp dir
  holding the program and `files`, deleted afterwards;
- a clean environment (PATH, LANG, HOME, TMPDIR only), so no secret in the caller's env leaks;
- rlimits: CPU seconds, address space, file size, processes, open files, no core dumps;
- stdout/stderr capture bounded to `max_output_bytes` each (the rest is read, counted, dropped);
- a preamble in the interpreter (defence in depth, bypassable by determined code via `_socket`,
  `posix` or ctypes): sockets other than socketpair(), DNS, file access outside the work dir, the
  temp dir and the Python installation, and signals to the parent or other process groups raise
  PermissionError.

Where `unshare` works (probed once, cached; `SandboxResult.isolation` names what was used) the run
also gets kernel isolation that code cannot undo:
- a network namespace: only a loopback interface, down, so no connection to anything;
- a pid namespace: host processes are invisible and unkillable, and when the program exits the
  kernel kills everything it left behind, even processes that called setsid();
- a mount namespace whose root is a fresh tmpfs of `disk_mb` (chroot) holding read-only, nosuid
  bind mounts of /usr, /lib*, /etc/ld.so.cache, the Python installation and
  /dev/{null,zero,random,urandom}, plus /work (cwd, a copy of `files`), /tmp and /dev/shm: the
  repo, home dirs, the rest of /etc, /proc and the caller's temp files do not exist in there;
- no privileges: as root the program runs under a random unused uid (so RLIMIT_NPROC counts only
  this run's processes); otherwise it is root of a user namespace with an empty capability
  bounding set and no_new_privs, where RLIMIT_NPROC counts per (namespace, uid), i.e. this run.
  (As root that user-namespace mode is only the fallback when plain namespaces are refused, and
  there RLIMIT_NPROC does not bind: the kernel exempts uid 0, so only the wall clock stops a fork
  bomb.)
Without unshare (containers that forbid namespaces) only the rlimits, the preamble and process
groups remain: a child that calls setsid() can outlive the run, RLIMIT_NPROC counts all of the
caller's tasks (so it is set to that count + max_processes) and does not bind root at all.

Not guaranteed in any mode: memory and processes are limited per process, not in total (32
processes x 1 GiB each could still be 32 GiB; cgroups would fix that and are not used), and there
is no seccomp filter, so the kernel's whole syscall surface is reachable. Programs see the stdlib
only (no site-packages).
"""
from __future__ import annotations

import json
import os
import random
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

# the interpreter itself, not a venv shim: the venv is not visible inside the sandbox
PYTHON = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
_MARK = "phi4ray_sandbox"  # `-X phi4ray_sandbox` marks sandboxed interpreters in `ps` output
_SETUP_FAILED = 125


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024  # address space per process
    file_size_mb: int = 16  # largest file a process may write
    max_processes: int = 32
    max_open_files: int = 64
    max_output_bytes: int = 65536  # kept per stream
    disk_mb: int = 64  # size of the tmpfs root (namespace mode): bounds all files together


@dataclass(frozen=True)
class SandboxResult:
    status: str  # ok | error | timeout | memory | cpu | killed | sandbox_error
    returncode: int | None  # -N when the program died of signal N
    stdout: str
    stderr: str
    wall_s: float
    isolation: str
    stdout_dropped: int = 0  # bytes beyond max_output_bytes, read and thrown away
    stderr_dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# Runs first inside `unshare` as pid 1 of the new pid namespace, with privileges in the new mount
# namespace: builds the tmpfs root, chroots, then forks the program under limits and without
# privileges and waits for it. When it exits the kernel kills whatever the program left behind.
_LAUNCHER = r"""
import ctypes, json, os, resource, shutil, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
RDONLY, NOSUID, NODEV, REMOUNT, BIND, REC = 1, 2, 4, 32, 4096, 16384
def mount(src, dst, fstype, flags, data=None):
    arg = lambda s: None if s is None else s.encode()
    if libc.mount(arg(src), arg(dst), arg(fstype), ctypes.c_ulong(flags), arg(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {dst}: {os.strerror(err)}")
try:
    root = cfg["root"]
    mount("sandbox", root, "tmpfs", NOSUID | NODEV, f"size={cfg['disk_mb']}m,mode=755")
    for path in cfg["ro"]:
        dst = root + path
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(path):  # merged /usr: /bin -> usr/bin
            os.symlink(os.readlink(path), dst)
            continue
        os.mkdir(dst) if os.path.isdir(path) else open(dst, "w").close()
        mount(path, dst, None, BIND | REC)
        locked = os.statvfs(path).f_flag & (8 | 1024 | 2048)  # noexec/noatime can't be cleared in a userns
        mount(None, dst, None, REMOUNT | BIND | RDONLY | NOSUID | locked | (0 if path.startswith("/dev/") else NODEV))
    for d in ("/tmp", "/dev/shm"):
        os.makedirs(root + d)
        os.chmod(root + d, 0o1777)
    shutil.copytree(cfg["work"], root + "/work")
    os.makedirs(root + "/sandbox")
    shutil.copy(cfg["main"], root + "/sandbox/main.py")
    if cfg["uid"] is not None:
        for d, _, names in os.walk(root + "/work"):
            for p in [d] + [os.path.join(d, n) for n in names]:
                os.chown(p, cfg["uid"], cfg["uid"])
    os.chroot(root)
    os.chdir("/work")
except Exception as e:
    print(f"phi4ray-sandbox: setup failed: {e!r}", file=sys.stderr, flush=True)
    os._exit(125)
libc.prctl(4, 0, 0, 0, 0)  # not dumpable: a program with our uid (userns mode) can't ptrace us
pid = os.fork()
if pid == 0:
    try:
        for name, soft, hard in cfg["rlimits"]:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        for cap in range(64):  # empty bounding set: the exec'd program starts with no capabilities
            if libc.prctl(24, cap, 0, 0, 0) != 0:
                break
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
        libc.prctl(38, 1, 0, 0, 0)  # no_new_privs: setuid binaries can't give privileges back
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except BaseException as e:
        print(f"phi4ray-sandbox: setup failed: {e!r}", file=sys.stderr, flush=True)
    os._exit(125)
status = os.waitpid(pid, 0)[1]
os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
"""

# Runs inside the sandboxed interpreter before the program (passed with -c; __CFG__ is replaced).
_PREAMBLE = r"""
import builtins, io, os, socket, sys, types
_cfg = __CFG__
with open(_cfg["main"], encoding="utf-8") as _f:
    _src = _f.read()
if _cfg["rlimits"]:  # no launcher (no namespaces): the limits are set here, before any program code
    import resource
    for _name, _soft, _hard in _cfg["rlimits"]:
        resource.setrlimit(getattr(resource, _name), (_soft, _hard))

def _deny(what):
    raise PermissionError(f"sandbox: {what} is not allowed")

class _Socket(socket.socket):
    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        if fileno is None:  # wrapping an fd (socketpair(), used by asyncio) is fine
            _deny("network access")
        super().__init__(family, type, proto, fileno)
socket.socket = _Socket
for _name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname", "gethostbyname_ex",
              "gethostbyaddr", "getnameinfo"):
    setattr(socket, _name, lambda *a, _n=_name, **k: _deny(f"socket.{_n}"))

_RW = [os.path.realpath(p) for p in _cfg["rw"]]
_RO = _RW + [os.path.realpath(p) for p in _cfg["ro"]]
def _check(path, write):
    if isinstance(path, int):
        return
    real = os.path.realpath(os.fsdecode(path))  # resolves symlinks and '..'
    if not any(real == r or real.startswith(r + "/") for r in (_RW if write else _RO)):
        _deny(("writing " if write else "reading ") + repr(os.fsdecode(path)))

def _wrap(module, name, write, npaths=1):
    real = getattr(module, name)
    def guarded(*args, **kwargs):
        for path in args[:npaths]:
            _check(path, write(args, kwargs) if callable(write) else write)
        return real(*args, **kwargs)
    setattr(module, name, guarded)
_wrap(builtins, "open", lambda a, k: any(c in (a[1] if len(a) > 1 else k.get("mode", "r")) for c in "wax+"))
io.open = builtins.open
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_wrap(os, "open", lambda a, k: bool((a[1] if len(a) > 1 else k["flags"]) & _WRITE))
for _name in ("listdir", "scandir", "chdir"):
    _wrap(os, _name, False)
for _name in ("mkdir", "remove", "unlink", "rmdir", "chmod", "truncate", "utime"):
    _wrap(os, _name, True)
for _name in ("rename", "replace", "link"):
    _wrap(os, _name, True, npaths=2)
_symlink = os.symlink
os.symlink = lambda src, dst, *a, **k: (_check(dst, True), _symlink(src, dst, *a, **k))[1]

_PPID, _kill, _killpg = os.getppid(), os.kill, os.killpg
def _guarded_kill(pid, sig):
    if pid <= 0 or pid == _PPID:
        _deny(f"signalling pid {pid}")
    return _kill(pid, sig)
def _guarded_killpg(pgid, sig):
    if pgid != os.getpgid(0):
        _deny(f"signalling process group {pgid}")
    return _killpg(pgid, sig)
os.kill, os.killpg = _guarded_kill, _guarded_killpg

sys.argv = [_cfg["main"]]
_main = types.ModuleType("__main__")  # a fresh __main__, so pickling user functions works
_main.__file__, _main.__builtins__ = _cfg["main"], builtins
sys.modules["__main__"] = _main
exec(compile(_src, _cfg["main"], "exec"), _main.__dict__)
"""

# isolation mode -> the layers it stacks, as SandboxResult.isolation reports them
ISOLATION = {
    "ns-root": "unshare(mount,net,pid)+tmpfs-chroot+random-uid+rlimits+preamble",
    "ns-userns": "unshare(user,mount,net,pid)+tmpfs-chroot+no-caps+rlimits+preamble",
    "preamble": "rlimits+process-group+preamble",
}
_mode: str | None = None
_mode_lock = threading.Lock()


def _ro_paths() -> list[str]:
    """System dirs and the Python installation, mounted read-only in the namespace mode."""
    cands = ["/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin", "/etc/ld.so.cache",
             os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix), os.path.dirname(PYTHON)]
    kept: list[str] = []
    for p in sorted({c for c in cands if os.path.lexists(c)}, key=len):
        if not any(p.startswith(k + "/") for k in kept if not os.path.islink(k)):
            kept.append(p)
    return kept


def _rlimits(limits: SandboxLimits, nproc: int) -> list[tuple[str, int, int]]:
    mb = 1 << 20
    return [("RLIMIT_CPU", limits.cpu_s, limits.cpu_s + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
            ("RLIMIT_AS", limits.memory_mb * mb, limits.memory_mb * mb),
            ("RLIMIT_FSIZE", limits.file_size_mb * mb, limits.file_size_mb * mb),
            ("RLIMIT_NPROC", nproc, nproc),
            ("RLIMIT_NOFILE", limits.max_open_files, limits.max_open_files),
            ("RLIMIT_CORE", 0, 0)]


def _tasks_of(uid: int) -> int:
    """Tasks (threads included, as RLIMIT_NPROC counts them) the uid already runs on this host."""
    n = 0
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                n += len(os.listdir(entry.path + "/task"))
        except OSError:
            pass
    return n


def _command(mode: str, tmp: str, limits: SandboxLimits) -> tuple[list[str], dict, str]:
    """The command line, environment and cwd of one run in the given mode."""
    main, work = os.path.join(tmp, "main.py"), os.path.join(tmp, "work")
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    # -E: no PYTHON* variables; -s -S: stdlib only; -B: no .pyc writes. Not -I: with -c the work
    # dir stays on sys.path, so the program can import the modules it was given in `files`.
    python = [PYTHON, "-E", "-s", "-S", "-B", "-X", "utf8", "-X", _MARK, "-c"]
    if mode == "preamble":
        nproc = _tasks_of(os.getuid()) + limits.max_processes
        cfg = {"main": main, "rw": [work], "ro": [sys.base_prefix, sys.base_exec_prefix, main, "/dev/null",
               "/dev/urandom"], "rlimits": _rlimits(limits, nproc)}
        return python + [_PREAMBLE.replace("__CFG__", repr(cfg))], {**base_env, "HOME": work, "TMPDIR": work}, work
    ro = _ro_paths() + ["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"]
    inner = {"main": "/sandbox/main.py", "rw": ["/work", "/tmp", "/dev/shm"], "ro": ro + ["/sandbox"], "rlimits": []}
    os.mkdir(os.path.join(tmp, "root"))
    cfg = {"root": os.path.join(tmp, "root"), "work": work, "main": main, "ro": ro, "disk_mb": limits.disk_mb,
           # a random unused uid: owns no file, can signal nothing of ours, and NPROC counts this run only
           "uid": random.SystemRandom().randrange(3_000_000_000, 4_000_000_000) if mode == "ns-root" else None,
           "rlimits": _rlimits(limits, limits.max_processes),
           "argv": python + [_PREAMBLE.replace("__CFG__", repr(inner))],
           "env": {**base_env, "HOME": "/work", "TMPDIR": "/tmp"}}
    flags = ["--mount", "--net", "--pid", "--fork", "--kill-child"]
    if mode == "ns-userns":
        flags = ["--user", "--map-root-user"] + flags
    launcher = [PYTHON, "-I", "-S", "-c", _LAUNCHER, json.dumps(cfg)]
    return [shutil.which("unshare") or "unshare", *flags, "--", *launcher], base_env, tmp


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except OSError:  # the program exited or closed stdin without reading it all
        pass


def _collect(proc: subprocess.Popen, limits: SandboxLimits, deadline: float):
    """Drain stdout/stderr until both close or the deadline passes, keeping the first
    `max_output_bytes` of each and counting the rest (draining, so a flood can't block or pile up)."""
    kept = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    dropped = {proc.stdout: 0, proc.stderr: 0}
    exited_at = None
    with selectors.DefaultSelector() as sel:
        for pipe in kept:
            sel.register(pipe, selectors.EVENT_READ)
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                break
            if proc.poll() is not None:  # exited; whatever still holds the pipes is a leftover child
                exited_at = exited_at or now
                if now - exited_at > 0.5:
                    break
            for key, _ in sel.select(timeout=min(0.1, deadline - now)):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                room = max(0, limits.max_output_bytes - len(kept[key.fileobj]))
                kept[key.fileobj] += chunk[:room]
                dropped[key.fileobj] += len(chunk) - min(room, len(chunk))
    return [(kept[p].decode("utf-8", "replace"), dropped[p]) for p in (proc.stdout, proc.stderr)]


def _status(timed_out: bool, rc: int, stderr: str) -> str:
    if timed_out:
        return "timeout"
    if rc == 0:
        return "ok"
    if rc == _SETUP_FAILED and "phi4ray-sandbox: setup failed" in stderr:
        return "sandbox_error"
    if rc == -signal.SIGXCPU:
        return "cpu"
    if "MemoryError" in stderr[-2000:]:  # RLIMIT_AS makes allocations fail inside Python
        return "memory"
    return "killed" if rc < 0 else "error"


def run_in_mode(code: str, limits: SandboxLimits, stdin: str, files: dict[str, str] | None, mode: str
                ) -> SandboxResult:
    """`run_python` in a given isolation mode (a key of ISOLATION), as probed or as a test forces it."""
    tmp = tempfile.mkdtemp(prefix="phi4ray-sandbox-")
    try:
        work = os.path.join(tmp, "work")
        os.mkdir(work)
        for name, text in (files or {}).items():
            if os.path.isabs(name) or ".." in name.split("/") or name in ("", "."):
                raise ValueError(f"file name {name!r} must be relative and stay inside the work dir")
            os.makedirs(os.path.dirname(os.path.join(work, name)), exist_ok=True)
            with open(os.path.join(work, name), "w", encoding="utf-8") as f:
                f.write(text)
        with open(os.path.join(tmp, "main.py"), "w", encoding="utf-8") as f:
            f.write(code)
        cmd, env, cwd = _command(mode, tmp, limits)
        start = time.monotonic()
        # a new session: the run's whole process group can be killed, and it can't signal ours
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd=cwd, start_new_session=True)
        if stdin:
            threading.Thread(target=_feed, args=(proc.stdin, stdin.encode()), daemon=True).start()
        (out, out_dropped), (err, err_dropped) = _collect(proc, limits, start + limits.wall_s)
        try:  # pipes closed: wait for the exit itself (a program can close its pipes and go on)
            proc.wait(timeout=max(0.0, start + limits.wall_s - time.monotonic()))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        try:  # everything at the timeout, leftovers otherwise (members keep the group id from reuse)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        rc = proc.wait()
        wall = time.monotonic() - start
        proc.stdout.close()
        proc.stderr.close()
        if mode != "preamble" and rc > 128:  # the launcher reports death by signal N as 128 + N
            rc = 128 - rc
        return SandboxResult(_status(timed_out, rc, err), None if timed_out else rc, out, err, wall,
                             ISOLATION[mode], out_dropped, err_dropped)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def isolation_mode() -> str:
    """The strongest mode that works here, probed once: namespaces as real root, in a user
    namespace, or the preamble and rlimits alone."""
    global _mode
    with _mode_lock:
        if _mode is None:
            cands = ["ns-root", "ns-userns"] if os.geteuid() == 0 else ["ns-userns"]
            if not shutil.which("unshare"):
                cands = []
            _mode = "preamble"
            for mode in cands:
                probe = run_in_mode("print(6 * 7)", SandboxLimits(wall_s=10), "", None, mode)
                if probe.ok and probe.stdout == "42\n":
                    _mode = mode
                    break
        return _mode


def run_python(code: str, limits: SandboxLimits = SandboxLimits(), stdin: str = "",
               files: dict[str, str] | None = None) -> SandboxResult:
    """Run `code` as the main script of a fresh sandboxed interpreter; `files` (relative name ->
    text) are placed in its working directory. Never raises for anything the code does."""
    return run_in_mode(code, limits, stdin, files, isolation_mode())


_FENCE = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)


def extract_code(text: str, language: str = "python") -> str | None:
    """The last ```python fenced block (```py / ```python3 count too), else the last bare ```
    block, else None."""
    names = {language} | ({"py", "python3"} if language == "python" else set())
    blocks = [(tag.strip().lower(), body) for tag, body in _FENCE.findall(text)]
    for wanted in (lambda tag: tag in names, lambda tag: tag == ""):
        matching = [body for tag, body in blocks if wanted(tag)]
        if matching:
            return matching[-1]
    return None


class CodeOracle:
    """Checks a completion by running its code with the tests: True iff it exits 0 in the
    sandbox. A completion without a fenced code block fails."""

    def __init__(self, limits: SandboxLimits = SandboxLimits(), language: str = "python"):
        self.limits, self.language = limits, language

    def __call__(self, completion: str, tests: str) -> bool:
        if not isinstance(completion, str) or not isinstance(tests, str):
            return False
        code = extract_code(completion, self.language)
        return code is not None and run_python(code + "\n" + tests, self.limits).ok
