"""gevent-websocket's ``environ["wsgi.websocket"]`` on geo_ws's protocol code.

Apps written for gevent-websocket or Flask-Sockets loop on ``ws.receive()`` and call
``ws.send(...)`` / ``ws.close(...)`` on the object their server puts in the environ.
geo_ws's server puts a :class:`LegacyWebSocket` there for every upgrade request, so
such apps run unchanged, with correct close codes and geo_ws's speed. Its handshake is
lazy: it happens when the app first uses the object, so an app that answers the
request over HTTP (or a geo_ws endpoint, which does its own handshake) is unaffected.

Where gevent-websocket is wrong, this follows RFC 6455: binary messages come back as
``bytes`` (not ``bytearray``), ``close(code, reason)`` puts the code on the wire, and
protocol errors close with 1002/1007/1009 instead of an empty Close frame.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, MutableSet
from typing import Any

from ..exceptions import ConnectionClosed, HandshakeError, WebSocketError
from ..io.connection import Connection
from ..io.options import Options
from ..protocol.handshake import check_request, response_101

__all__ = ["LegacyWebSocket", "legacy_options"]

#: geo_ws's defaults, for a LegacyWebSocket made without options (frozen: shared).
_DEFAULTS = Options()

TakeSocket = Callable[[], tuple[socket.socket, Callable[[int], bytes], MutableSet[Connection]]]


def legacy_options(application: Any) -> Options:
    """The settings of the gevent-websocket style connections of ``application``.

    Its ``GEO_WS_*`` config where it has one (a Flask app): ``GEO_WS_MAX_MESSAGE_SIZE``,
    ``GEO_WS_MAX_OUTBOX_SIZE``, ``GEO_WS_CLOSE_TIMEOUT``, ``GEO_WS_PING_INTERVAL``,
    ``GEO_WS_PING_TIMEOUT`` and the rate limits (``GEO_WS_MAX_MESSAGES_PER_SECOND``...)
    apply; else geo_ws's defaults (1 MiB messages, a ping every 20 s). There is no
    compression, origin check, subprotocol or address limit on this path.
    """
    config = getattr(application, "config", None)
    # compression is not negotiated here: its config value is not this path's to check.
    return Options.resolve({"compression": None}, config if isinstance(config, Mapping) else {})


class LegacyWebSocket:
    """The WebSocket of one request, with gevent-websocket's attribute and method names.

    Args:
        environ: the request's WSGI environ.
        take_socket: hands the client socket over (geo_ws's server provides it).
        options: the connection's limits and keepalive (see :func:`legacy_options`).
    """

    def __init__(
        self, environ: dict[str, Any], take_socket: TakeSocket, options: Options = _DEFAULTS
    ) -> None:
        self.environ = environ
        """The request's WSGI environ."""
        self._take_socket = take_socket
        self._options = options
        self._connection: Connection | None = None
        self._connections: MutableSet[Connection] | None = None

    # -- gevent-websocket's attributes ---------------------------------------------------

    @property
    def path(self) -> str:
        """The request path."""
        return str(self.environ.get("PATH_INFO", ""))

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header, if any."""
        return self.environ.get("HTTP_ORIGIN")

    @property
    def closed(self) -> bool:
        """Whether the connection can no longer carry messages."""
        connection = self._connection
        return connection is not None and not connection.can_send

    @property
    def opened(self) -> bool:
        """Whether the app used the object, so that the request was upgraded."""
        return self._connection is not None

    # -- gevent-websocket's methods --------------------------------------------------------

    def receive(self) -> str | bytes | None:
        """The next message (``str`` text, ``bytes`` binary), or ``None`` once closed."""
        connection = self._open()
        try:
            return connection.receive_or_closed()
        except ConnectionClosed:
            return None

    def send(
        self, message: str | bytes | bytearray | memoryview, binary: bool | None = None
    ) -> None:
        """Send a message: text for ``str``, binary for bytes, unless ``binary`` says.

        Raises:
            WebSocketError: the connection is closed.
        """
        connection = self._open()
        if binary is True and isinstance(message, str):
            message = message.encode()
        elif binary is False and not isinstance(message, str):
            message = bytes(message).decode()  # a text frame must carry UTF-8
        if not connection.send(message):
            raise WebSocketError("the WebSocket is closed")

    def close(self, code: int = 1000, message: str | bytes = b"") -> None:
        """Run the closing handshake with ``code`` and ``message`` as reason, close TCP."""
        connection = self._connection
        if connection is None:
            return
        reason = message.decode() if isinstance(message, (bytes, bytearray)) else message
        connection.close(code, reason)
        if self._connections is not None:
            self._connections.discard(connection)

    # -- geo_ws's side -----------------------------------------------------------------

    def _open(self) -> Connection:
        """Upgrade on first use: check the handshake, answer 101, wrap the socket."""
        if self._connection is None:
            try:
                key = check_request(self.environ)
            except HandshakeError as error:
                raise WebSocketError(f"not a valid WebSocket handshake: {error}") from None
            sock, recv, connections = self._take_socket()
            self._connection = Connection(sock, recv, **self._options.connection_settings())
            self._connections = connections
            connections.add(self._connection)
            sock.sendall(response_101(key))
        return self._connection

    def finish(self) -> None:
        """After the app returned: finish the closing handshake the app left open.

        A close that geo_ws requested (a rate limit, a keepalive timeout) goes out with its
        own code and reason; a client's Close is answered with its own code.
        """
        connection = self._connection
        if connection is not None:
            request = connection.close_request
            if request is not None:
                self.close(request.code, request.reason)
            else:
                self.close(connection.echo_code or 1000)
