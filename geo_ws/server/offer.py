"""What geo_ws's handlers put in a request's environ so that the app can take the
socket over, and take back once the app is done."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from ..io.options import Options
from ..protocol.handshake import is_upgrade_request
from .legacy import LegacyWebSocket, TakeSocket
from .wsgi import TAKE_SOCKET

__all__ = ["end_request", "offer_legacy", "offer_socket", "recv_after"]


def offer_socket(environ: dict[str, Any], take_socket: TakeSocket, options: Options) -> bool:
    """Put in the environ what lets the app take the socket over.

    Returns:
        Whether the request asks for a WebSocket.
    """
    environ[TAKE_SOCKET] = take_socket
    if not is_upgrade_request(environ):
        return False
    offer_legacy(environ, take_socket, options)
    return True


def offer_legacy(environ: dict[str, Any], take_socket: TakeSocket, options: Options) -> None:
    """For apps written for gevent-websocket; upgrades only if the app uses it."""
    environ["wsgi.websocket"] = LegacyWebSocket(environ, take_socket, options)
    environ["wsgi.websocket_version"] = "13"


def end_request(environ: dict[str, Any]) -> None:
    """After the app returned: finish what a gevent-websocket style app left open, and
    withdraw the socket from the environ.

    The socket's takers refer to the environ and the environ to them: without the
    withdrawal, every request would be left to the garbage collector.
    """
    legacy = environ.pop("wsgi.websocket", None)
    if isinstance(legacy, LegacyWebSocket) and legacy.opened:
        legacy.finish()
    environ.pop(TAKE_SOCKET, None)


def recv_after(data: bytes, sock: socket.socket) -> Callable[[int], bytes]:
    """A ``recv`` for a WebSocket that returns ``data`` (read past the request's head)
    first, then reads ``sock``; ``sock.recv`` itself when there is nothing, so that the
    connection may read the socket directly (and park)."""
    if not data:
        return sock.recv
    pending = [data]

    def recv(size: int) -> bytes:
        return pending.pop() if pending else sock.recv(size)

    return recv
