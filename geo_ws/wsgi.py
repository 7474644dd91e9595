"""Taking the client socket over from the WSGI server that accepted it.

Every server hands the raw socket over differently; this module is the one place
that knows how, and how each expects the WSGI call to end afterwards:

- geo_ws's own server (:mod:`geo_ws.server`) puts ``geo_ws.take_socket`` in the
  environ; afterwards the app returns an empty body and the server writes nothing.
- gunicorn's ``-k gevent`` worker puts the socket in ``gunicorn.socket``;
  afterwards the app raises ``StopIteration``, which gunicorn takes as "close
  quietly" (``workers/base_async.py``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, MutableSet
from dataclasses import dataclass
from typing import Any

from .connection import Connection

__all__ = ["TAKE_SOCKET", "Transport", "take_over"]

TAKE_SOCKET = "geo_ws.take_socket"
"""Environ key of geo_ws's server: a callable returning ``(socket, recv, connections)``."""


@dataclass
class Transport:
    """A client socket taken over from the WSGI server."""

    sock: socket.socket
    """The client's socket."""
    recv: Callable[[int], bytes]
    """Reads from the client, starting with any bytes the server already buffered."""
    connections: MutableSet[Connection] | None
    """The server's set of open WebSocket connections (closed with 1001 on shutdown)."""
    stop_iteration: bool = False
    """End the WSGI call by raising ``StopIteration`` (gunicorn) instead of returning."""

    def end_response(self) -> Iterable[bytes]:
        """End the WSGI call the way this server expects once the socket is done."""
        if self.stop_iteration:
            raise StopIteration
        return []


def take_over(environ: dict[str, Any]) -> Transport | None:
    """Take the client socket of this request, or ``None`` if the server cannot hand it over."""
    take = environ.get(TAKE_SOCKET)
    if take is not None:
        sock, recv, connections = take()
        return Transport(sock, recv, connections)
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        return Transport(sock, sock.recv, None, stop_iteration=True)
    return None
