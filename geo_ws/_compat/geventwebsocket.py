"""What geo_ws reads of gevent-websocket's handler, to take over a connection it
upgraded (``environ["wsgi.websocket"]`` under its gunicorn worker).

gevent-websocket documents its WebSocket object, not its handler. Tested on
gevent-websocket 0.10.1 (its last release).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

__all__ = ["upgraded_connection"]


def upgraded_connection(websocket: Any) -> tuple[socket.socket, Callable[[int], bytes]] | None:
    """The socket of a connection gevent-websocket upgraded, and a read of what its
    buffered reader already holds; ``None`` for another object."""
    handler = getattr(websocket, "handler", None)
    if handler is None:
        return None
    return handler.socket, handler.rfile.read1
