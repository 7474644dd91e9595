"""Shared fixtures: the process is monkey-patched, servers run in-process on port 0."""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from geo_ws.server.builtin import Server  # noqa: E402

from .helpers import close_clients  # noqa: E402

#: Scales every timeout of the suite on slow machines (GEO_WS_TESTS_TIMEOUT_FACTOR=3).
TIMEOUT_FACTOR = float(os.environ.get("GEO_WS_TESTS_TIMEOUT_FACTOR", "1"))


@pytest.fixture
def serve() -> Iterator[Callable[[Any], str]]:
    """Start a geo_ws server for an app on a free loopback port; returns ``host:port``.

    Every server started is shut down after the test.
    """
    servers: list[Server] = []

    def start(app: Any) -> str:
        server = Server(("127.0.0.1", 0), app, log=None)
        server.start()
        servers.append(server)
        return f"127.0.0.1:{server.address[1]}"

    yield start
    close_clients()
    for server in servers:
        server.shutdown(timeout=2)
