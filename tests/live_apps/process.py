"""Run a server (or any command) as a subprocess of the monkey-patched test process.

Its stdout and stderr are read line by line by greenlets, so a test can wait (bounded)
for a line such as ``geo_ws serving on http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import gevent
from gevent.queue import Empty, Queue

#: The repository root: the subprocesses' cwd and PYTHONPATH.
ROOT = Path(__file__).resolve().parents[2]
#: Scales the waits on slow machines, like tests/conftest.py.
TIMEOUT_FACTOR = float(os.environ.get("GEO_WS_TESTS_TIMEOUT_FACTOR", "1"))
#: How long a server subprocess may take to start listening, in seconds.
START_TIMEOUT = 20.0 * TIMEOUT_FACTOR
SERVING = re.compile(r"geo_ws serving on http://([^\s:]+):(\d+)")


def child_env() -> dict[str, str]:
    """The environment of a subprocess: PYTHONPATH is the repository root."""
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def run_command(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (bounded) and capture its output as text."""
    return subprocess.run(
        list(args),
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout * TIMEOUT_FACTOR,
    )


def run_python(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with this interpreter, to completion."""
    return run_command(sys.executable, *args, timeout=timeout)


class _Lines:
    """The lines of one pipe, read by a greenlet as they come."""

    def __init__(self, pipe: Any) -> None:
        self.lines: list[str] = []
        self._queue: Queue[str | None] = Queue()
        self._reader = gevent.spawn(self._read, pipe)

    def _read(self, pipe: Any) -> None:
        try:
            for raw in pipe:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.lines.append(line)
                self._queue.put(line)
        finally:
            self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first line (not yet waited past) matching ``pattern``; fails at EOF or timeout."""
        deadline = gevent.get_hub().loop.now() + timeout * TIMEOUT_FACTOR
        while True:
            remaining = deadline - gevent.get_hub().loop.now()
            try:
                line = self._queue.get(timeout=max(0.0, remaining))
            except Empty:
                raise AssertionError(
                    f"no line matching {pattern.pattern!r} within {timeout}s; got {self.lines!r}"
                ) from None
            if line is None:
                self._queue.put(None)  # stay at EOF for later waits
                raise AssertionError(
                    f"EOF before a line matching {pattern.pattern!r}; got {self.lines!r}"
                )
            match = pattern.search(line)
            if match:
                return match

    def finish(self, timeout: float = 5.0) -> list[str]:
        """All lines, once the pipe reached EOF (the process has exited)."""
        self._reader.join(timeout * TIMEOUT_FACTOR)
        return self.lines


class ServerProcess:
    """``python ARGS`` as a subprocess; a context manager that kills it at the end."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stdout = _Lines(self.proc.stdout)
        self.stderr = _Lines(self.proc.stderr)

    def wait_serving(self, timeout: float = START_TIMEOUT) -> tuple[str, int]:
        """Wait for the ``geo_ws serving on`` log line; return the host and port."""
        match = self.stderr.wait_for(SERVING, timeout)
        return match.group(1), int(match.group(2))

    def wait(self, timeout: float) -> int:
        """Wait (bounded) for the process to exit; return its exit code."""
        return self.proc.wait(timeout=timeout * TIMEOUT_FACTOR)

    def stop(self) -> None:
        """Kill the process if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        finally:
            for lines in (self.stdout, self.stderr):
                lines.finish(timeout=2)
                lines._reader.kill(block=False)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
