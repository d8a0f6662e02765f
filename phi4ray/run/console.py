"""What a person reads, and where everything else goes.

A run prints one line per stage start and finish (with its headline counts and time), the few
lines a stage means for a person (`say`) and progress bars for our own long loops (`progress`).
Everything else written to the process's stdout and stderr (Ray's and Ray Data's logging, the
worker output Ray streams to the driver, vLLM's engine logs from the replicas, warnings) goes to
a log file under RUN/logs/: one per stage, and `run.log` for what happens between stages
(starting and stopping Ray, deleting Serve apps).

The redirection is at the file-descriptor level (dup2 of fds 1 and 2), because much of that
output does not go through Python's sys.stdout: Ray's core logs from C++, and the log monitor
thread's copies of worker output, are written to whatever fd 1/2 are at that moment. The console
keeps its own duplicate of the terminal's fd, taken before any redirection. `--verbose` leaves the
fds alone: everything reaches the terminal as before.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, TextIO

from tqdm import tqdm


class Console:
    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        sys.stdout.flush()
        try:  # a line-buffered copy of the terminal's stdout, so `say` keeps reaching it under a redirect
            self.stream: TextIO = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
            self._owned = True
        except (AttributeError, OSError, ValueError):  # sys.stdout is no file (pytest's capsys): write to it
            self.stream, self._owned = sys.stdout, False

    def say(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    @contextlib.contextmanager
    def logging_to(self, path: Path) -> Iterator[Path]:
        """fds 1 and 2 write to `path` (appended) inside the block; nested blocks switch files and
        switch back. A no-op under --verbose."""
        if self.verbose:
            yield path
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            yield path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for f in (fd, *saved):
                os.close(f)

    def close(self) -> None:
        if self._owned:
            self.stream.close()


_current: Console | None = None


def install(console: Console | None) -> None:
    """Make `console` the one `say` and `progress` write to (the CLI does this; None: plain stdout)."""
    global _current
    if _current is not None and _current is not console:
        _current.close()
    _current = console


def say(line: str) -> None:
    """A line for the person running the job. Without an installed console (a library user,
    a test), plain print."""
    if _current is None:
        print(line, flush=True)
    else:
        _current.say(line)


def progress(total: int | None, desc: str, unit: str = "it", iterable=None) -> tqdm:
    """A progress bar on the console for a loop of ours (over `iterable` if given). Shown only where it can redraw in place
    (a terminal); in a pipe or a CI log it stays silent instead of printing a line per update."""
    stream = _current.stream if _current is not None else sys.stderr
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, leave=False,
                disable=not stream.isatty())


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last lines of a log file (what the CLI shows beside a stage's traceback)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))  # bounded: a log can be gigabytes
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def logging_to(path: Path) -> contextlib.AbstractContextManager:
    """The installed console's `logging_to`; without one (a library user, a test) output stays where it is."""
    return _current.logging_to(path) if _current is not None else contextlib.nullcontext(path)
