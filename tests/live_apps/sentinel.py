"""A real Redis Sentinel set-up on loopback ports: a master, a replica and three sentinels
(``redis-server --sentinel``), quick to declare the master down and to fail over.

Test modules import the fixture: ``from tests.live_apps.sentinel import sentinel_cluster``.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest

from .process import START_TIMEOUT, TIMEOUT_FACTOR, _Lines
from .redis_server import READY, free_port

#: The name the sentinels know the master by.
SERVICE = "geo"
#: How long the master may be silent before a sentinel thinks it down, in milliseconds.
DOWN_AFTER_MS = 1000
#: How long a failover may take before another is tried, in milliseconds.
FAILOVER_TIMEOUT_MS = 3000
SYNCED = re.compile(r"MASTER <-> REPLICA sync: Finished with success")
REPLICA_SEEN = re.compile(r"\+slave slave ")
SWITCHED = re.compile(r"\+switch-master " + SERVICE + r" \S+ (\d+) \S+ (\d+)")


class _Redis:
    """One ``redis-server`` process on ``port`` (a data node or a sentinel), and its log."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            ["redis-server", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines = _Lines(self.proc.stdout)

    def kill(self) -> None:
        """SIGKILL it, as a crash would, and reap it (a no-op once done)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.lines.finish()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _data_node(directory: Path, *args: str) -> _Redis:
    """A redis-server without persistence on a free port, working in a directory of its
    own (a replica writes the master's snapshot there)."""
    port = free_port()
    workdir = directory / f"redis-{port}"
    workdir.mkdir()
    options = ("--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir))
    return _Redis(port, *options, "--save", "", "--appendonly", "no", *args)


class SentinelCluster:
    """A master, its replica and three sentinels monitoring them as :data:`SERVICE`,
    started in ``directory`` (where the sentinels rewrite their config files).

    Ready once the replica has synced and every sentinel has seen the replica and the
    other two sentinels: a failover can then be agreed on.
    """

    def __init__(self, directory: Path) -> None:
        self.master = _data_node(directory)
        self.replica = _data_node(directory, "--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinels: list[_Redis] = []
        try:
            self.master.lines.wait_for(READY, START_TIMEOUT)
            self.replica.lines.wait_for(SYNCED, START_TIMEOUT)
            for n in range(3):
                self.sentinels.append(self._sentinel(directory / f"sentinel-{n}.conf"))
            for sentinel in self.sentinels:
                sentinel.lines.wait_for(REPLICA_SEEN, START_TIMEOUT)
                for _ in range(2):
                    sentinel.lines.wait_for(re.compile(r"\+sentinel sentinel "), START_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def _sentinel(self, config: Path) -> _Redis:
        port = free_port()
        config.write_text(
            f"port {port}\nbind 127.0.0.1\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
        )
        return _Redis(port, str(config), "--sentinel", "--dir", str(config.parent))

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The sentinels' addresses."""
        return [("127.0.0.1", sentinel.port) for sentinel in self.sentinels]

    @property
    def url(self) -> str:
        """Its ``redis+sentinel://`` URL."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.addresses)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def kill_master(self) -> None:
        """SIGKILL the master: the sentinels promote the replica."""
        self.master.kill()

    def wait_failover(self, timeout: float) -> int:
        """Wait (bounded) until a sentinel announces the new master; return its port."""
        waits = [
            gevent.spawn(sentinel.lines.wait_for, SWITCHED, timeout) for sentinel in self.sentinels
        ]
        done = gevent.wait(waits, timeout=timeout * TIMEOUT_FACTOR, count=1)
        gevent.killall(waits, block=False)
        switched = [greenlet.value for greenlet in done if greenlet.successful()]
        assert switched, "no sentinel announced a new master"
        return int(switched[0].group(2))

    def stop(self) -> None:
        """Kill every process (a no-op for those already dead)."""
        for node in (*self.sentinels, self.replica, self.master):
            node.kill()


@pytest.fixture
def sentinel_cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    """A cluster of its own for one test (tests kill its master)."""
    cluster = SentinelCluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()
