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
from .wsgi import TAKE_SOCKET

__all__ = ["Server", "run"]

logger = logging.getLogger("geo_ws")

PATCH_HINT = """geo_ws needs gevent's monkey-patching, or one blocking call stalls every client.
Start your script with these two lines, before any other import:

    from gevent import monkey
    monkey.patch_all()

(`geo-ws run module:app` and geo_ws's gunicorn worker do this for you.)"""


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Handler(WSGIHandler):
    """gevent's WSGI handler, able to hand its socket over to a WebSocket."""

    _upgraded = False

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        environ[TAKE_SOCKET] = self._take_socket
        return environ

    def _take_socket(self) -> tuple[socket.socket, Callable[[int], bytes], set[Connection]]:
        self._upgraded = True
        server = cast(Server, self.server)
        # read1 first returns what the request parser buffered past the head.
        return self.socket, self.rfile.read1, server.connections

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
        **kwargs: passed to :class:`gevent.pywsgi.WSGIServer`.
    """

    def __init__(self, listener: Any, application: Any, **kwargs: Any) -> None:
        kwargs.setdefault("handler_class", Handler)
        # A pool, unlike the default spawner, lets stop() wait for the handlers.
        kwargs.setdefault("spawn", Pool())
        super().__init__(listener, application, **kwargs)
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
    ready: Callable[[Server], None] | None = None,
) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then shut down cleanly.

    Args:
        app: a Flask app (or any WSGI app).
        host: the address to listen on.
        port: the port to listen on (0 picks a free one).
        graceful_timeout: how long closing handshakes may take at shutdown, in seconds.
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
    server = Server((host, port), app)
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
