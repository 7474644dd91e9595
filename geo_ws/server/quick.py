"""The quick path for WebSocket handshakes that arrive whole, and the direct lanes
through which an app layer can take them without its framework's dispatch."""

from __future__ import annotations

import io
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from ..protocol.handshake import RequestHead, is_upgrade_request
from .offer import end_request, offer_legacy, recv_after
from .wsgi import TAKE_SOCKET, OpenConnections

if TYPE_CHECKING:
    from .builtin import Server

__all__ = [
    "DirectLane",
    "QuickHandshake",
    "Replay",
    "direct_lane_for",
    "register_direct_lane",
]

logger = logging.getLogger("geo_ws")


class Replay(io.RawIOBase):
    """Reads ``data``, then the socket: gives pywsgi a request the quick path began."""

    def __init__(self, data: bytes, sock: socket.socket) -> None:
        super().__init__()
        self._data = data
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        data = self._data
        if data:
            size = min(len(buffer), len(data))
            buffer[:size] = data[:size]
            self._data = data[size:]
            return size
        try:
            return self._sock.recv_into(buffer)
        except BlockingIOError:
            return None  # nothing yet, without waiting (a timeout of 0, as SocketIO)


#: Header names as sent -> their environ keys, for the names seen first.
_ENVIRON_KEYS: dict[str, str] = {}


class QuickHandshake:
    """A WebSocket handshake whose head arrived whole, served without pywsgi's handler.

    Most connections of a WebSocket server start this way, so this path is lean: the
    head was parsed by :func:`~geo_ws.protocol.handshake.parse_request_head`, the environ is
    built directly, and the app runs on the connection's own greenlet. When the app
    does not upgrade (a refusal, a 404), its response is sent and the connection
    closed.
    """

    __slots__ = (
        "address",
        "environ",
        "rest",
        "requestline",
        "response",
        "server",
        "sock",
        "upgraded",
        "websocket",
    )

    def __init__(
        self, server: Server, sock: socket.socket, address: Any, head: RequestHead, rest: bytes
    ) -> None:
        self.server = server
        self.sock = sock
        self.address = address
        self.rest = rest
        """What came behind the head (frames a client sent without waiting for the 101)."""
        self.requestline = f"{head.method} {head.target} HTTP/1.1"
        self.upgraded = False
        self.response: tuple[str, list[tuple[str, str]], list[bytes]] | None = None
        self.websocket = False
        """Whether the request asks for a WebSocket (else it is left to pywsgi)."""
        self.environ = self._environ(head)

    def _environ(self, head: RequestHead) -> dict[str, Any]:
        """The WSGI environ, as pywsgi would build it."""
        environ: dict[str, Any] = self.server.get_environ()
        path, _, query = head.target.partition("?")
        environ["REQUEST_METHOD"] = head.method
        environ["SCRIPT_NAME"] = ""
        environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1") if "%" in path else path
        environ["QUERY_STRING"] = query
        environ["SERVER_PROTOCOL"] = "HTTP/1.1"
        environ["REMOTE_ADDR"] = str(self.address[0])
        environ["REMOTE_PORT"] = str(self.address[1])
        for name, value in head.headers:
            key = _ENVIRON_KEYS.get(name)
            if key is None:
                if "_" in name:
                    continue  # as pywsgi: "X_Forwarded" must not pass for "X-Forwarded"
                key = "HTTP_" + name.upper().replace("-", "_")
                if len(_ENVIRON_KEYS) < 256:  # the usual names, not whatever clients send
                    _ENVIRON_KEYS[name] = key
            if key in environ:
                environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
            else:
                environ[key] = value
        environ["wsgi.input"] = io.BytesIO()
        environ["wsgi.input_terminated"] = True
        environ[TAKE_SOCKET] = self.take_socket
        self.websocket = is_upgrade_request(environ)
        return environ

    def take_socket(self) -> tuple[socket.socket, Callable[[int], bytes], OpenConnections]:
        """Hand the socket over to the WebSocket (``geo_ws.take_socket``)."""
        self.server._hand_over(self.sock)
        self.upgraded = True
        return self.sock, recv_after(self.rest, self.sock), self.server.connections

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        """WSGI's ``start_response``; the response waits for the body (it is short)."""
        self.response = (status, headers, [])
        return self.response[2].append

    def run(self) -> None:
        """Call the app; send its response unless it upgraded; log the request."""
        started = time.time()
        environ = self.environ
        status, length = "500", 0
        try:
            direct = self.server.direct_lane
            if direct is not None and direct(environ):
                status = "101"
                return
            offer_legacy(environ, self.take_socket, self.server.legacy_options)
            result: Iterable[bytes] = self.server.application(environ, self.start_response)
            try:
                end_request(environ)
                if self.upgraded:
                    status = "101"
                else:
                    status, length = self._respond(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception:
            logger.exception("error serving %s", self.requestline)
            if not self.upgraded:
                self.response = None
                self._respond(())
        finally:
            self.server._log_quick_request(self, status, length, started)

    def _respond(self, result: Iterable[bytes]) -> tuple[str, int]:
        """Send the app's response (or a 500 without one) and close the connection."""
        status, headers, written = self.response or ("500 Internal Server Error", [], [])
        body = b"".join([*written, *result])
        lines = [f"HTTP/1.1 {status}"]
        lines.extend(
            f"{name}: {value}"
            for name, value in headers
            if name.lower() not in ("connection", "content-length", "transfer-encoding")
        )
        lines.append(f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        try:
            self.sock.sendall("\r\n".join(lines).encode("latin-1") + body)
        except OSError:
            pass  # the client left
        return status, len(body)


DirectLane = Callable[[dict[str, Any]], bool]
"""Serves a WebSocket handshake's environ and returns ``True``, or returns ``False``
having done nothing (the app must dispatch it)."""

_DIRECT_LANE_FACTORIES: list[Callable[[Any], DirectLane | None]] = []


def register_direct_lane(factory: Callable[[Any], DirectLane | None]) -> None:
    """Let the app layer take handshakes straight from the quick path.

    The server knows no framework: the Flask glue registers
    :func:`geo_ws.flask.direct.direct_lane` when it is imported, which every app with
    geo_ws endpoints has done before it is served.

    Args:
        factory: called with the WSGI app a server is made for; returns its lane, or
            ``None`` for an app it does not know.
    """
    if factory not in _DIRECT_LANE_FACTORIES:
        _DIRECT_LANE_FACTORIES.append(factory)


def direct_lane_for(application: Any) -> DirectLane | None:
    """The first registered lane for ``application``, or ``None``."""
    for factory in _DIRECT_LANE_FACTORIES:
        lane = factory(application)
        if lane is not None:
            return lane
    return None
