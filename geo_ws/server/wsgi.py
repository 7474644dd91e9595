"""Taking the client socket over from the WSGI server that accepted it.

Every server hands the raw socket over differently; this module is the one place
that knows how, and how each expects the WSGI call to end afterwards:

- geo_ws's own server (:mod:`geo_ws.server.builtin`, also behind
  :class:`geo_ws.server.gunicorn.Worker`) puts ``geo_ws.take_socket`` in the environ;
  afterwards the app returns an empty body and the server writes nothing, nor closes
  the socket: the WebSocket may go on without the request's greenlet.
- gunicorn's ``-k gevent`` worker puts the socket in ``gunicorn.socket``;
  afterwards the app raises ``StopIteration``, which gunicorn takes as "close
  quietly" (``workers/base_async.py``). Bytes its parser read past the request head
  are out of reach, which is harmless: a client waits for the 101 before sending.
- gunicorn's ``-k gevent_pywsgi`` worker (gevent's pywsgi) puts the socket in
  ``gunicorn.sock``; the bytes read past the head wait in its buffered reader,
  which is ``wsgi.input`` for an upgrade request. Afterwards the app records the
  101 with ``start_response`` (for the access log), tells pywsgi's handler that the
  response went out and that the connection is over, and returns an empty body.
- gevent-websocket's ``GeventWebSocketWorker`` has already answered 101 and put its
  own WebSocket object in ``wsgi.websocket``: geo_ws takes its handler's socket and
  reader, writes no second 101, and marks that object closed so that it does not
  send a Close of its own afterwards. (Its handshake came first: ``before_request``
  refusals, origins and subprotocols can no longer change the 101.)
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, MutableSet
from dataclasses import dataclass
from typing import Any

from gevent.event import Event
from gevent.pywsgi import WSGIHandler

from .._compat.geventwebsocket import upgraded_connection
from .._compat.pywsgi import mark_response_started
from ..io.connection import Connection

__all__ = ["FOREIGN_CONNECTIONS", "TAKE_SOCKET", "OpenConnections", "Transport", "take_over"]

TAKE_SOCKET = "geo_ws.take_socket"
"""Environ key of geo_ws's server: a callable returning ``(socket, recv, connections)``."""

FOREIGN_CONNECTIONS: set[Connection] = set()
"""The open WebSocket connections this process took over from servers that know nothing
of WebSockets (gunicorn's own gevent workers, gevent-websocket's): what
:func:`geo_ws.server.gunicorn_hooks.post_worker_init` closes with 1001 when such a worker stops."""


class OpenConnections(set[Connection]):
    """The open WebSocket connections of a server, offered with its sockets.

    Args:
        on_detached_end: called when a :attr:`detached` connection ends.
    """

    def __init__(self, on_detached_end: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.detached: set[Connection] = set()
        """Those that went on past their WSGI call, without its greenlet (parked)."""
        self.none_left = Event()
        """Set while there is none (shutdown waits for it)."""
        self.none_left.set()
        self._on_detached_end = on_detached_end

    def add(self, connection: Connection) -> None:
        """Count ``connection`` in."""
        super().add(connection)
        self.none_left.clear()

    def detach(self, connection: Connection) -> None:
        """``connection`` goes on past its WSGI call."""
        self.detached.add(connection)

    def discard(self, connection: object) -> None:
        """``connection`` has ended."""
        super().discard(connection)
        if connection in self.detached:
            self.detached.discard(connection)
            if self._on_detached_end is not None:
                self._on_detached_end()
        if not self:
            self.none_left.set()


@dataclass
class Transport:
    """A client socket taken over from the WSGI server."""

    sock: socket.socket
    """The client's socket."""
    recv: Callable[[int], bytes]
    """Reads from the client, starting with any bytes the server already buffered."""
    connections: MutableSet[Connection] | None
    """The server's set of open WebSocket connections (closed with 1001 on shutdown);
    an :class:`OpenConnections` where the connection may outlive the WSGI call, and
    :data:`FOREIGN_CONNECTIONS` for servers that keep none."""
    stop_iteration: bool = False
    """End the WSGI call by raising ``StopIteration`` (gunicorn) instead of returning."""
    upgraded: bool = False
    """The server has already sent the 101 (gevent-websocket)."""
    finish: Callable[[Any], Any] | None = None
    """Called with ``start_response`` once the socket is done, to tell the server the
    connection is over."""
    detachable: bool = False
    """The server leaves the socket open when the WSGI call ends: the connection may
    outlive it (see :meth:`geo_ws.io.connection.Connection.park`)."""

    def end_response(self, start_response: Any = None) -> Iterable[bytes]:
        """End the WSGI call the way this server expects once the socket is done."""
        if self.finish is not None:
            self.finish(start_response)
        if self.stop_iteration:
            raise StopIteration
        return []


def take_over(environ: dict[str, Any]) -> Transport | None:
    """Take the client socket of this request, or ``None`` if the server cannot hand it over."""
    take = environ.get(TAKE_SOCKET)
    if take is not None:
        sock, recv, connections = take()
        # Taken once and for all: neither key may offer it again, and an idle connection
        # need not keep them.
        del environ[TAKE_SOCKET]
        environ.pop("wsgi.websocket", None)
        detachable = isinstance(connections, OpenConnections)
        return Transport(sock, recv, connections, detachable=detachable)
    websocket: Any = environ.get("wsgi.websocket")
    upgraded = upgraded_connection(websocket)  # gevent-websocket's, past its 101
    if upgraded is not None:

        def finish(start_response: Any) -> None:
            # Its handler closes the object unless it is closed already: no second Close.
            websocket.closed = True

        return Transport(*upgraded, FOREIGN_CONNECTIONS, upgraded=True, finish=finish)
    sock = environ.get("gunicorn.sock")
    if sock is not None:
        # pywsgi hands upgrade requests its raw buffered reader; others, an Input on it.
        rfile = getattr(environ["wsgi.input"], "rfile", environ["wsgi.input"])

        def end_pywsgi(start_response: Any) -> None:
            handler = getattr(start_response, "__self__", None)
            if isinstance(handler, WSGIHandler):
                start_response("101 Switching Protocols", [])  # what the access log shows
                mark_response_started(handler)  # ours went out before the session
                handler.close_connection = True
            else:
                # Behind a middleware that wraps start_response: a closed reader ends
                # pywsgi's keep-alive loop as well.
                rfile.close()

        return Transport(sock, rfile.read1, FOREIGN_CONNECTIONS, finish=end_pywsgi)
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        return Transport(sock, sock.recv, FOREIGN_CONNECTIONS, stop_iteration=True)
    return None
