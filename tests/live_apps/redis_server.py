"""A real ``redis-server`` (the Debian package; ``scripts/test.sh`` installs it) on a
free loopback port, without persistence.

Test modules import the fixture: ``from tests.live_apps.redis_server import redis_server``.
"""

from __future__ import annotations

import re
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from .process import START_TIMEOUT, _Lines

READY = re.compile(r"Ready to accept connections")


def free_port() -> int:
    """A loopback port nothing listens on (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """``redis-server --port PORT --bind 127.0.0.1 --save '' --appendonly no``.

    Started at once, and again by :meth:`start` (same port) after :meth:`kill`.

    Args:
        aof_dir: with a directory, ``--appendonly yes`` there instead: what Redis
            acknowledged survives a SIGKILL.
    """

    def __init__(self, aof_dir: str | None = None) -> None:
        self.port = free_port()
        self.aof_dir = aof_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        """Its ``redis://`` URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and wait (bounded) until it accepts connections."""
        persistence = ["--appendonly", "no"]
        if self.aof_dir is not None:
            persistence = ["--appendonly", "yes", "--dir", self.aof_dir]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + persistence,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines = _Lines(self.proc.stdout)
        self.lines.wait_for(READY, START_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL it, as a crash would, and reap it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.lines.finish()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session; tests keep apart with their own namespaces."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.kill()


def namespace() -> str:
    """A channel namespace of its own for one test."""
    return "test-" + uuid.uuid4().hex[:8]
