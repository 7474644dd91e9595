"""geo_ws's built-in server: gevent's WSGI server, able to hand sockets over.

:func:`run` serves a Flask app's HTTP routes and WebSocket endpoints on one port
and shuts down cleanly on SIGTERM or SIGINT: it stops accepting, sends Close 1001
to every open WebSocket, waits (bounded) for the closing handshakes and the close
handlers, then returns.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Callable
from typing import Any, cast

import gevent
from gevent.event import Event
from gevent.monkey import is_module_patched
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from .connection import Connection
from .exceptions import HandshakeError
from .handshake import is_upgrade_request
from .legacy import LegacyWebSocket
from .wsgi import TAKE_SOCKET

__all__ = ["Server", "run"]

logger = logging.getLogger("geo_ws")

PATCH_HINT = """geo_ws needs gevent's monkey-patching, or one blocking call stalls every client.
Start your script with these two lines, before any other import:

    from gevent import monkey
    monkey.patch_all()

(`geo-ws run module:app` and geo_ws's gunicorn worker do this for you.)"""


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The request line and headers of a request may take at most this many bytes (431 beyond).
MAX_HEAD_SIZE = 16 * 1024
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 38\r\n\r\n"
    b"request headers are larger than 16 KiB\n"
)


class _HeadTooLarge(Exception):
    """The request's headers exceed :data:`MAX_HEAD_SIZE`."""


class _SlowHead(BaseException):
    """The request's head did not arrive within ``handshake_timeout``.

    A BaseException, so that gevent's request parsing, which turns exceptions into
    400 responses, lets it through to :meth:`Handler.handle_one_request`.
    """


class _LimitedReader:
    """Lets the header parser read at most ``limit`` bytes from the buffered reader."""

    def __init__(self, rfile: Any, limit: int) -> None:
        self._rfile = rfile
        self._left = limit

    def readline(self, size: int = -1) -> bytes:
        line: bytes = self._rfile.readline(
            self._left + 1 if size < 0 else min(size, self._left + 1)
        )
        self._left -= len(line)
        if self._left < 0:
            raise _HeadTooLarge
        return line


class Handler(WSGIHandler):
    """gevent's WSGI handler, able to hand its socket over to a WebSocket.

    It also bounds what a request head may cost: ``handshake_timeout`` seconds
    (slowloris) and :data:`MAX_HEAD_SIZE` bytes (431).
    """

    _upgraded = False
    _head_timer: gevent.Timeout | None = None

    def handle_one_request(self) -> Any:
        server = cast(Server, self.server)
        self._head_timer = gevent.Timeout.start_new(server.handshake_timeout, _SlowHead)
        try:
            return super().handle_one_request()
        except _SlowHead:
            self.close_connection = True
            return None
        finally:
            self._head_timer.close()

    def read_request(self, raw_requestline: str) -> Any:
        rfile = self.rfile
        # The header parser reads through self.rfile: let it see a bounded view.
        self.rfile = _LimitedReader(rfile, MAX_HEAD_SIZE - len(raw_requestline))  # type: ignore[assignment]
        try:
            return super().read_request(raw_requestline)
        finally:
            self.rfile = rfile

    def _handle_client_error(self, ex: BaseException) -> Any:
        if isinstance(ex, _HeadTooLarge):
            self.close_connection = True
            return ("431", _HEAD_TOO_LARGE)
        # gevent's hook for bad requests, not in its type stubs.
        return super()._handle_client_error(ex)  # type: ignore[misc]

    def get_environ(self) -> dict[str, Any]:
        if self._head_timer is not None:
            self._head_timer.close()  # the head is in: the app may take its time
        environ: dict[str, Any] = super().get_environ()
        environ[TAKE_SOCKET] = self._take_socket
        if is_upgrade_request(environ):
            # For apps written for gevent-websocket; upgrades only if the app uses it.
            environ["wsgi.websocket"] = LegacyWebSocket(environ, self._take_socket)
            environ["wsgi.websocket_version"] = "13"
        return environ

    def _take_socket(self) -> tuple[socket.socket, Callable[[int], bytes], set[Connection]]:
        server = cast(Server, self.server)
        if server.stopping:
            raise HandshakeError(503, "the server is shutting down")
        self._upgraded = True
        sock, rfile = self.socket, self.rfile
        # Take what the request parser buffered past the head (a client may send frames
        # right behind its handshake) without waiting, then close the buffered reader:
        # that frees its 8 KiB buffer, and the WebSocket reads the socket directly.
        sock.settimeout(0.0)
        try:
            buffered = rfile.read1(65536) or b""
        except OSError:
            buffered = b""
        finally:
            sock.settimeout(None)
        rfile.close()
        if self.wsgi_input is not None:  # nothing left for pywsgi to discard
            self.wsgi_input.content_length = 0
            self.wsgi_input.chunked_input = False
        if not buffered:
            return sock, sock.recv, server.connections
        pending = [buffered]

        def recv(size: int) -> bytes:
            return pending.pop() if pending else sock.recv(size)

        return sock, recv, server.connections

    def read_requestline(self) -> str:
        server = cast(Server, self.server)
        if server.stopping:
            return ""  # no new request on a kept-alive connection once stopping
        # Waiting for a kept-alive connection's next request: shutdown may cut this short.
        server.idle.add(self)
        try:
            return super().read_requestline()
        finally:
            server.idle.discard(self)

    def run_application(self) -> None:
        self._upgraded = False
        application, environ = self.application, self.environ
        assert application is not None and environ is not None
        try:
            self.result = application(environ, self.start_response)
            legacy = environ.get("wsgi.websocket")
            if isinstance(legacy, LegacyWebSocket) and legacy.opened:
                legacy.finish()
            if self._upgraded:
                # The WebSocket owned the socket and has closed it: write nothing more.
                self.status = "101 Switching Protocols"
                self.close_connection = True
            else:
                self.process_result()
        finally:
            close = getattr(self.result, "close", None)
            self.result = None
            if close is not None:
                close()


class Server(WSGIServer):
    """A gevent WSGI server for apps with WebSocket endpoints.

    Args:
        listener: an ``(host, port)`` address (port 0 picks a free one) or a socket.
        application: the WSGI app, usually a Flask app.
        handshake_timeout: how long a client may take to send a request's line and
            headers, in seconds, before its connection is closed (slowloris); it also
            bounds how long a kept-alive HTTP connection may wait idle.
        **kwargs: passed to :class:`gevent.pywsgi.WSGIServer`.
    """

    def __init__(
        self, listener: Any, application: Any, *, handshake_timeout: float = 10.0, **kwargs: Any
    ) -> None:
        kwargs.setdefault("handler_class", Handler)
        # A pool, unlike the default spawner, lets stop() wait for the handlers.
        kwargs.setdefault("spawn", Pool())
        super().__init__(listener, application, **kwargs)
        self.handshake_timeout = handshake_timeout
        self.connections: set[Connection] = set()
        """The open WebSocket connections."""
        self.idle: set[Handler] = set()
        """Handlers of kept-alive HTTP connections waiting for their next request."""
        self.stopping = False
        """Whether :meth:`shutdown` was called."""

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, close WebSockets with 1001 and wait up to ``timeout`` seconds.

        Handlers still running after ``timeout`` are killed; close handlers run either
        way. Idempotent.
        """
        self.close()
        self.stopping = True
        for handler in list(self.idle):
            # An idle kept-alive HTTP connection would hold stop() for the whole timeout.
            try:
                handler.socket.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        for connection in list(self.connections):
            connection.request_close(1001, "server shutting down")
        self.stop(timeout=timeout)


def run(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    graceful_timeout: float = 10.0,
    handshake_timeout: float = 10.0,
    ready: Callable[[Server], None] | None = None,
) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then shut down cleanly.

    Args:
        app: a Flask app (or any WSGI app).
        host: the address to listen on.
        port: the port to listen on (0 picks a free one).
        graceful_timeout: how long closing handshakes may take at shutdown, in seconds.
        handshake_timeout: how long a client may take to send a request's head (see
            :class:`Server`).
        ready: called with the server once it listens.

    When nothing has configured :mod:`logging` yet, it logs to stderr at INFO level.

    Raises:
        RuntimeError: the ``socket`` module is not monkey-patched by gevent.
    """
    if not is_module_patched("socket"):
        raise RuntimeError(PATCH_HINT)
    if not logging.getLogger().handlers:
        # Nothing configured logging: show the address and errors on stderr.
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    server = Server((host, port), app, handshake_timeout=handshake_timeout)
    stop = Event()
    handlers = [
        gevent.signal_handler(signum, stop.set) for signum in (signal.SIGTERM, signal.SIGINT)
    ]
    server.start()
    logger.info("geo_ws serving on http://%s:%d", server.server_host, server.server_port)
    if ready is not None:
        ready(server)
    try:
        stop.wait()
        logger.info("shutting down: closing %d WebSocket(s)", len(server.connections))
        server.shutdown(graceful_timeout)
    finally:
        for handler in handlers:
            handler.cancel()
