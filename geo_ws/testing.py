"""Testing your geo_ws app over real sockets: a pytest plugin and a small client.

Installing geo_ws registers this plugin with pytest. Its ``geo_ws_server`` fixture
serves the Flask app of your own ``app`` fixture (pytest-flask's convention) on a free
loopback port, in-process, and connects real WebSocket clients to it::

    import pytest
    from myproject import create_app

    @pytest.fixture
    def app():
        return create_app()

    def test_chat(geo_ws_server):
        alice = geo_ws_server.connect("/chat/ws", query={"name": "alice"})
        alice.send("hi")
        assert alice.recv(timeout=5) == '{"from": "alice", "text": "hi"}'
        alice.close()
        assert alice.close_code == 1000

Clients are :class:`geo_ws.client.ClientConnection` objects (``connect(...,
resume=True)``: a ``ResumingConnection``, which comes back by itself after a drop on an
endpoint with ``recovery=``): ``send(str | bytes)``,
``recv(timeout=...)`` (text as ``str``, binary as ``bytes``; raises
:class:`~geo_ws.exceptions.ConnectionClosed` once closed), ``close(code, reason)``,
``close_code``, ``close_reason``. Everything the fixture opened is closed after the test.
The server runs in the test's process on gevent: start the test process with
``from gevent import monkey; monkey.patch_all()`` (e.g. at the top of ``conftest.py``)
if your handlers make blocking calls.

This module imports nothing heavy until the fixture is used, so it costs other test
suites nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast, overload
from urllib.parse import urlencode

import pytest

if TYPE_CHECKING:
    from .io.client import ClientConnection
    from .io.resuming import ResumingConnection
    from .server.builtin import Server

__all__ = ["LiveServer", "geo_ws_server"]


class LiveServer:
    """A geo_ws server for one app on a free loopback port, and its clients.

    Args:
        app: the Flask (or WSGI) app to serve.
    """

    def __init__(self, app: Any) -> None:
        from .server.builtin import Server

        self.app = app
        """The app being served."""
        self._server: Server = Server(("127.0.0.1", 0), app, log=None)
        self._server.start()
        self.port = cast(int, self._server.server_port)
        """The port the server listens on."""
        self._clients: list[ClientConnection | ResumingConnection] = []

    def url(self, path: str = "/", scheme: str = "ws") -> str:
        """``ws://127.0.0.1:PORT/path`` (or ``http://`` with ``scheme="http"``)."""
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    # The overloads say which class connect() returns, as geo_ws.client.connect's do.
    @overload
    def connect(
        self,
        path: str,
        *,
        query: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        subprotocols: Sequence[str] | None = None,
        timeout: float = 5.0,
        resume: Literal[False] = False,
    ) -> ClientConnection: ...

    @overload
    def connect(
        self,
        path: str,
        *,
        query: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        subprotocols: Sequence[str] | None = None,
        timeout: float = 5.0,
        resume: Literal[True],
    ) -> ResumingConnection: ...

    def connect(
        self,
        path: str,
        *,
        query: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        subprotocols: Sequence[str] | None = None,
        timeout: float = 5.0,
        resume: bool = False,
    ) -> ClientConnection | ResumingConnection:
        """Open a WebSocket to ``path`` (with ``query`` appended); closed after the test.

        Args:
            path: the endpoint's path.
            query: the query string's parameters.
            headers: extra handshake headers.
            subprotocols: subprotocols to offer (not with ``resume``).
            timeout: seconds the handshake (and, with ``resume``, the hello) may take.
            resume: for an endpoint with ``recovery=``: the client comes back by itself
                after a drop and ``recv()`` goes on returning every message once, in order
                (``geo_ws.client.connect(url, resume=True)``).

        Returns:
            The open client: a ``geo_ws.client.ResumingConnection`` with ``resume=True``.

        Raises:
            HandshakeError: the app refused the handshake (its HTTP status).
        """
        from .io.client import connect

        url = self.url(path) + ("?" + urlencode(query) if query else "")
        client: ClientConnection | ResumingConnection
        if resume:
            client = connect(url, headers=headers, timeout=timeout, resume=True)
        else:
            client = connect(url, headers=headers, subprotocols=subprotocols, timeout=timeout)
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Close every client, then shut the server down (1001 to what is left)."""
        for client in self._clients:
            if not client.closed:
                client.close(timeout=1)
        self._server.shutdown(timeout=2)


@pytest.fixture
def geo_ws_server(request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """Serve the ``app`` fixture's Flask app on a free loopback port for this test."""
    server = LiveServer(request.getfixturevalue("app"))
    try:
        yield server
    finally:
        server.close()
