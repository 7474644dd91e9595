"""geo_ws's built-in server: gevent's WSGI server, able to hand sockets over.

:func:`run` serves a Flask app's HTTP routes and WebSocket endpoints on one port
and shuts down cleanly on SIGTERM or SIGINT: it stops accepting, sends Close 1001
to every open WebSocket, waits (bounded) for the closing handshakes and the close
handlers, then returns.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import io
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import partial
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import gevent
from gevent.event import Event
from gevent.monkey import get_original, is_module_patched, is_object_patched
from gevent.pywsgi import LoggingLogAdapter, WSGIServer
from greenlet import GreenletExit, getcurrent, greenlet

from .._compat.gevent import read_watcher
from .._compat.pywsgi import (
    HandlerHooks,
    handle_accepted,
    no_request_body_left,
    use_pool_capacity_as_given,
)
from ..exceptions import HandshakeError
from ..io.connection import is_tls, workers
from ..io.options import Options
from ..protocol.handshake import RequestHead, is_upgrade_request, parse_request_head
from .legacy import LegacyWebSocket, TakeSocket, legacy_options
from .wsgi import TAKE_SOCKET, OpenConnections

__all__ = ["Server", "run", "settle_process"]

logger = logging.getLogger("geo_ws")

PATCH_HINT = """geo_ws needs gevent's monkey-patching, or one blocking call stalls every client.
Start your script with these two lines, before any other import:

    from gevent import monkey
    monkey.patch_all()

(`geo-ws run module:app` and geo_ws's gunicorn worker do this for you.)"""

LATE_PATCH_HINT = (
    "the process was monkey-patched too late: modules imported before kept what gevent "
    "patches, blocking, as it was: %s.\n"
    "Patch before any other import: start your script with these two lines,\n\n"
    "    from gevent import monkey\n"
    "    monkey.patch_all()\n\n"
    "or serve with `geo-ws run module:app`, which does it for you (`flask geo-ws run` can "
    "only patch once Flask has imported the app)."
)

#: What gevent patches that a module may have taken (``from time import sleep``) before.
_PATCHED_NAMES = {
    "socket": ("socket", "create_connection", "socketpair", "getaddrinfo"),
    "time": ("sleep",),
    "select": ("select", "poll"),
    "threading": ("Lock", "RLock", "Event", "Condition", "Semaphore", "local", "get_ident"),
    "_thread": ("allocate_lock", "get_ident", "start_new_thread"),
}


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The request line and headers of a request may take at most this many bytes (431 beyond).
MAX_HEAD_SIZE = 16 * 1024
#: A request may have at most this many header fields (431 beyond), however they
#: arrive: the header parser pywsgi uses (``http.client``) takes no more, as it counts
#: the blank line that ends them among its 100 lines.
MAX_HEADERS = 99

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9112 sections 3 and 5: what a request line and a header field line may be. No
# bare CR or LF (they would end a line early for some parsers, and show up in access
# logs), no NUL, no whitespace around the method or before the colon, no folding.
_REQUEST_LINE = re.compile(_TOKEN.decode() + r" [^\x00-\x20\x7f]+ HTTP/[0-9]\.[0-9]\r\n")
_FIELD_LINE = re.compile(_TOKEN + rb":[^\r\n\x00]*\r\n")


class _BadHead(Exception):
    """The request's head is refused: answer ``status`` and close the connection.

    Args:
        status: the status line's code and phrase, e.g. ``"400 Bad Request"``.
        reason: what was wrong, the response's body.
    """

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        body = reason.encode("ascii") + b"\n"
        self.response = (
            f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("ascii") + body
        """The whole response."""


def _bad_request(reason: str) -> _BadHead:
    return _BadHead("400 Bad Request", reason)


_DIGITS = re.compile(r"[0-9]+")


def _check_framing(headers: Any, version: str) -> None:
    """Refuse a request whose body's length is in doubt (RFC 9112 section 6).

    Two parsers on the way (a proxy and this server) could each see a different end of
    the body, and take the rest for another request: request smuggling.

    Args:
        headers: the request's parsed headers (an ``email.message.Message``).
        version: the request's HTTP version, e.g. ``"HTTP/1.1"``.

    Raises:
        _BadHead: 400, or 501 for a transfer coding other than chunked.
    """
    codings = headers.get_all("Transfer-Encoding")
    lengths = headers.get_all("Content-Length")
    if codings:
        if lengths:
            raise _bad_request("both Transfer-Encoding and Content-Length")
        if version == "HTTP/1.0":
            raise _bad_request("Transfer-Encoding in an HTTP/1.0 request")
        names = [name.strip().lower() for value in codings for name in value.split(",")]
        if names[-1] != "chunked" or "chunked" in names[:-1]:
            raise _bad_request("chunked must be the final transfer coding, once")
        if len(names) > 1:
            raise _BadHead("501 Not Implemented", "only the chunked transfer coding is supported")
    elif lengths:
        values = {value.strip() for value in lengths}
        if len(values) > 1 or not _DIGITS.fullmatch(values.pop()):
            raise _bad_request("invalid Content-Length")


#: accept() errors that say the process (or the system) has run out of descriptors or
#: memory: they come in bursts, every retry failing until connections close.
_EXHAUSTED = {
    errno.EMFILE: "this process has run out of file descriptors (ulimit -n)",
    errno.ENFILE: "the system has run out of file descriptors",
    errno.ENOBUFS: "the system has run out of socket buffers",
    errno.ENOMEM: "the system has run out of memory",
}


class _Exhausted(GreenletExit):
    """accept() failed for want of resources (see :data:`_EXHAUSTED`), already reported.

    gevent's accept loop backs off and retries after any exception, and prints each
    one's traceback unless the hub counts it as no error: ``GreenletExit`` is one.
    """


class _SlowHead(BaseException):
    """The request's head did not arrive within ``handshake_timeout``.

    A BaseException, so that gevent's request parsing, which turns exceptions into
    400 responses, lets it through to :meth:`Handler.handle_one_request`.
    """


class _HeadReader:
    """What the header parser reads through: at most ``limit`` bytes of the buffered
    reader, in at most :data:`MAX_HEADERS` well-formed header field lines.

    Raises:
        _BadHead: 431 past ``limit`` or :data:`MAX_HEADERS`, 400 for a malformed line.
    """

    def __init__(self, rfile: Any, limit: int) -> None:
        self._rfile = rfile
        self._left = limit
        self._fields = 0

    def readline(self, size: int = -1) -> bytes:
        line: bytes = self._rfile.readline(
            self._left + 1 if size < 0 else min(size, self._left + 1)
        )
        self._left -= len(line)
        if self._left < 0:
            raise _BadHead(
                "431 Request Header Fields Too Large", "request headers are larger than 16 KiB"
            )
        if line in (b"\r\n", b""):
            return line
        if not _FIELD_LINE.fullmatch(line):
            raise _bad_request("malformed header line")
        self._fields += 1
        if self._fields > MAX_HEADERS:
            raise _BadHead(
                "431 Request Header Fields Too Large", f"more than {MAX_HEADERS} header fields"
            )
        return line


def _offer_socket(environ: dict[str, Any], take_socket: TakeSocket, options: Options) -> bool:
    """Put in the environ what lets the app take the socket over.

    Returns:
        Whether the request asks for a WebSocket.
    """
    environ[TAKE_SOCKET] = take_socket
    if not is_upgrade_request(environ):
        return False
    _offer_legacy(environ, take_socket, options)
    return True


def _offer_legacy(environ: dict[str, Any], take_socket: TakeSocket, options: Options) -> None:
    """For apps written for gevent-websocket; upgrades only if the app uses it."""
    environ["wsgi.websocket"] = LegacyWebSocket(environ, take_socket, options)
    environ["wsgi.websocket_version"] = "13"


def _end_request(environ: dict[str, Any]) -> None:
    """After the app returned: finish what a gevent-websocket style app left open, and
    withdraw the socket from the environ.

    The socket's takers refer to the environ and the environ to them: without the
    withdrawal, every request would be left to the garbage collector.
    """
    legacy = environ.pop("wsgi.websocket", None)
    if isinstance(legacy, LegacyWebSocket) and legacy.opened:
        legacy.finish()
    environ.pop(TAKE_SOCKET, None)


_stamp: tuple[int, str] = (-1, "")

# What the client sent is logged with control characters, quotes and backslashes as
# \xNN, as nginx does: a CR or LF must not start a forged line of the log.
_UNSAFE = re.compile(r'[\x00-\x1f"\\\x7f-\x9f]')


def _log_safe(text: str) -> str:
    """``text`` (sent by a client) as it may be written to a log."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _access_line(client: Any, requestline: str, status: str, length: Any, started: float) -> str:
    """A line of the access log, in gevent's format."""
    global _stamp
    second = int(started)
    if second != _stamp[0]:  # the time stamp, formatted once a second
        _stamp = (second, str(datetime.fromtimestamp(second)))
    return (
        f'{client or "-"} - - [{_stamp[1]}] "{_log_safe(requestline)}" {status.split()[0]} '
        f"{length or '-'} {time.time() - started:.6f}\n"
    )


def _recv_after(data: bytes, sock: socket.socket) -> Callable[[int], bytes]:
    """A ``recv`` for a WebSocket that returns ``data`` (read past the request's head)
    first, then reads ``sock``; ``sock.recv`` itself when there is nothing, so that the
    connection may read the socket directly (and park)."""
    if not data:
        return sock.recv
    pending = [data]

    def recv(size: int) -> bytes:
        return pending.pop() if pending else sock.recv(size)

    return recv


class _AccessLog:
    """An access log written once per turn of the event loop.

    A burst of handshakes then costs one write, not a system call each (stderr is
    line-buffered).
    """

    def __init__(self, out: Any) -> None:
        self.out = out
        """Where the lines go: a file-like object."""
        self._lines: list[str] = []

    def write(self, line: str) -> None:
        """Log ``line`` (with its newline) at the end of this turn of the event loop."""
        if not self._lines:
            gevent.get_hub().loop.run_callback(self._flush)
        self._lines.append(line)

    def _flush(self) -> None:
        lines, self._lines = self._lines, []
        try:
            self.out.write("".join(lines))
        except (OSError, ValueError):
            pass  # a closed or broken stderr must not stop the server


class Handler(HandlerHooks):
    """gevent's WSGI handler, able to hand its socket over to a WebSocket.

    It also bounds what a request head may cost: ``handshake_timeout`` seconds
    (slowloris) and :data:`MAX_HEAD_SIZE` bytes (431), and refuses a malformed one
    or one whose body's length is in doubt with 400 (RFC 9112), closing the
    connection: a request pipelined behind it is not served.
    """

    _upgraded = False
    _head_timer: gevent.Timeout | None = None
    head_deadline: float | None = None
    """When the first request's head must be in (the event loop's time), if the server
    says: ``handshake_timeout`` runs from the connection's accept, not from this
    handler's start. Later heads on a kept-alive connection get ``handshake_timeout``."""

    def handle_one_request(self) -> Any:
        server = cast(Server, self.server)
        self.environ = None  # the last request's, on a kept-alive connection
        deadline, self.head_deadline = self.head_deadline, None
        timeout = server.handshake_timeout
        if deadline is not None:
            timeout = max(0.0, deadline - gevent.get_hub().loop.now())
        self._head_timer = gevent.Timeout.start_new(timeout, _SlowHead)
        try:
            return super().handle_one_request()
        except _SlowHead:
            self.close_connection = True
            return None
        finally:
            self._head_timer.close()

    def read_request(self, raw_requestline: str) -> Any:
        if not _REQUEST_LINE.fullmatch(raw_requestline):
            raise _bad_request("malformed request line")
        rfile = self.rfile
        # The header parser reads through self.rfile: let it see a bounded, checked view.
        self.rfile = _HeadReader(rfile, MAX_HEAD_SIZE - len(raw_requestline))  # type: ignore[assignment]
        try:
            return super().read_request(raw_requestline)
        finally:
            self.rfile = rfile

    def MessageClass(self, *args: Any) -> Any:
        """Parse the request's headers (``read_request`` calls it), then check its framing."""
        headers = super().MessageClass(*args)
        _check_framing(headers, self.request_version or "")
        return headers

    def client_error_response(self, error: BaseException) -> tuple[str, bytes] | None:
        """Answer a head refused by geo_ws's own checks; pywsgi answers the rest."""
        if isinstance(error, _BadHead):
            self.close_connection = True
            return (error.status, error.response)
        return None

    def log_request(self) -> None:
        status = self.status or "000"
        if isinstance(status, bytes):  # as start_response stored it
            status = status.decode("latin-1")
        address = self.client_address
        line = _access_line(
            address[0] if isinstance(address, tuple) else address,
            (self.requestline or "").rstrip("\r\n"),
            status,
            self.response_length,
            self.time_start,
        )
        self.server.log.write(line)

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        # RFC 9110 section 7.8: a response that offers an Upgrade (a 426) names it in
        # Connection too. The app may not send Connection (PEP 3333, and servers that
        # write their own would repeat it): the server adds it.
        names = {name.lower() for name, _ in headers}
        if "upgrade" in names and "connection" not in names:
            headers = [*headers, ("Connection", "Upgrade")]
        return super().start_response(status, headers, exc_info)

    def get_environ(self) -> dict[str, Any]:
        if self._head_timer is not None:
            self._head_timer.close()  # the head is in: the app may take its time
        environ: dict[str, Any] = super().get_environ()
        _offer_socket(environ, self._take_socket, cast(Server, self.server).legacy_options)
        return environ

    def _take_socket(self) -> tuple[socket.socket, Callable[[int], bytes], OpenConnections]:
        server = cast(Server, self.server)
        server._hand_over(self.socket)
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
        no_request_body_left(self)
        return sock, _recv_after(buffered, sock), server.connections

    def read_requestline(self) -> str:
        server = cast(Server, self.server)
        if server.stopping:
            return ""  # no new request on a kept-alive connection once stopping
        # Waiting for a kept-alive connection's next request: shutdown may cut this short.
        server.idle.add(self.socket)
        try:
            return super().read_requestline()
        finally:
            server.idle.discard(self.socket)

    def run_application(self) -> None:
        self._upgraded = False
        application, environ = self.application, self.environ
        assert application is not None and environ is not None
        try:
            self.result = application(environ, self.start_response)
            _end_request(environ)
            if self._upgraded:
                # The socket is the WebSocket's: write nothing more, and leave closing it
                # to the WebSocket, which may go on without this greenlet.
                self.status = "101 Switching Protocols"
                self.close_connection = True
                self.socket = None  # type: ignore[assignment]
            else:
                self.process_result()
        finally:
            close = getattr(self.result, "close", None)
            self.result = None
            if close is not None:
                close()


class _Replay(io.RawIOBase):
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


class _QuickHandshake:
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
        return self.sock, _recv_after(self.rest, self.sock), self.server.connections

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
            _offer_legacy(environ, self.take_socket, self.server.legacy_options)
            result: Iterable[bytes] = self.server.application(environ, self.start_response)
            try:
                _end_request(environ)
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


class Server(WSGIServer):
    """A gevent WSGI server for apps with WebSocket endpoints.

    Args:
        listener: an ``(host, port)`` address (port 0 picks a free one) or a socket.
        application: the WSGI app, usually a Flask app.
        handshake_timeout: how long a client may take to send a request's line and
            headers, in seconds, before its connection is closed (slowloris); it also
            bounds how long a kept-alive HTTP connection may wait idle.
        **kwargs: passed to :class:`gevent.pywsgi.WSGIServer`. Without ``spawn``, each
            client is handled on a reused greenlet once its first bytes came (see
            :meth:`do_handle`); with it (``spawn=Pool(1000)`` to bound the clients),
            as gevent does.
    """

    quick_handshakes = True
    """Serve WebSocket handshakes that arrive in one piece without pywsgi's handler
    (see :meth:`handle`); ``False`` sends every request through ``handler_class``."""

    def __init__(
        self, listener: Any, application: Any, *, handshake_timeout: float = 10.0, **kwargs: Any
    ) -> None:
        kwargs.setdefault("handler_class", Handler)
        super().__init__(listener, application, **kwargs)
        # gevent's stand-in, the pool's full(), would leave parked WebSockets out.
        use_pool_capacity_as_given(self)
        # Where the quick path logs requests: nowhere with log=None (pywsgi would make it a
        # sink, and each line would still be formatted).
        self._access_log: Any = None
        if kwargs.get("log", "default") is not None:
            if not isinstance(self.log, LoggingLogAdapter):  # a logger takes lines one by one
                self.log = cast(Any, _AccessLog(self.log))
            self._access_log = self.log
        self.handshake_timeout = handshake_timeout
        self.direct_lane = direct_lane_for(application) if self.quick_handshakes else None
        """Serves the handshakes that need not go through the app's dispatch, if a
        registered factory (:func:`register_direct_lane`) knows the app."""
        self.legacy_options = legacy_options(application)
        """The limits and keepalive of gevent-websocket style connections
        (:func:`geo_ws.server.legacy.legacy_options`: the app's ``GEO_WS_*`` config)."""
        self.connections = OpenConnections(self._detached_ended)
        """The open WebSocket connections."""
        self._taken: set[socket.socket] = set()
        self.idle: set[socket.socket] = set()
        """Connections waiting for a request (shutdown closes them at once)."""
        self.stopping = False
        """Whether :meth:`shutdown` was called."""
        # Without spawn= (see do_handle): clients waited for in the event loop, with the
        # timer that gives up on each, and the greenlets handling one.
        self._own_handlers = kwargs.get("spawn", "default") == "default"
        self._first_bytes: dict[socket.socket, Any] = {}
        # When each client being handled was accepted (the event loop's time): its
        # request head is due handshake_timeout later, however late its first bytes.
        self._accepted: dict[socket.socket, float] = {}
        self._busy: set[greenlet] = set()
        self._exhausted = False  # accept() is failing for want of descriptors
        self._none_busy = Event()
        self._none_busy.set()

    def do_read(self) -> Any:
        """Accept a client (gevent's accept loop calls it); report running out of
        descriptors once per burst of failures, instead of a traceback per retry.

        Raises:
            _Exhausted: accept() failed for want of resources; gevent's loop retries later.
        """
        try:
            accepted = super().do_read()
        except OSError as error:
            why = _EXHAUSTED.get(error.errno or 0)
            if why is None:
                raise
            if not self._exhausted:
                self._exhausted = True
                logger.warning(
                    "cannot accept connections: %s (%s); retrying until connections close",
                    why,
                    errno.errorcode[error.errno or 0],
                )
            raise _Exhausted from None
        if self._exhausted and accepted:
            self._exhausted = False
            logger.warning("accepting connections again")
        return accepted

    def full(self) -> bool:
        """Whether the pool is at its size (if it has one), parked WebSockets included.

        A WebSocket holds a place as long as it is open, with or without a greenlet.
        """
        pool = self.pool
        if pool is None or pool.size is None:
            return False
        return len(pool) + len(self.connections.detached) >= pool.size

    def _detached_ended(self) -> None:
        # A place came free without the pool knowing: accept again if full() stopped it.
        if self.started and not self.full():
            self.start_accepting()

    def _hand_over(self, sock: socket.socket) -> None:
        """A WebSocket takes ``sock`` over: it closes it, maybe long after the request.

        Raises:
            HandshakeError: 503, :meth:`shutdown` has begun.
        """
        if self.stopping:
            raise HandshakeError(503, "the server is shutting down")
        # do_close sees the raw socket, not its TLS wrapper: a TLS connection is never
        # parked (its bytes go through the wrapper), so it has closed both by then.
        if not is_tls(sock):
            self._taken.add(sock)

    def do_close(self, sock: socket.socket, *args: Any) -> None:
        """After a client's handler: close its socket, unless a WebSocket took it."""
        self._accepted.pop(sock, None)
        if sock in self._taken:
            self._taken.discard(sock)
        else:
            sock.close()

    def handle(self, sock: socket.socket, address: Any) -> None:
        """Serve one client connection (on a greenlet of its own, see :meth:`do_handle`).

        A WebSocket handshake that arrived in one piece, the usual case, takes a quick
        path; everything else (HTTP requests, heads in pieces, TLS) gevent's WSGI
        handler, which reads what the quick path read, then the socket.
        """
        if self.stopping:
            return
        now = gevent.get_hub().loop.now()
        deadline = self._accepted.get(sock, now) + self.handshake_timeout
        # TLS is pywsgi's to handle; Unix sockets have no port for the environ.
        quick = self.quick_handshakes and isinstance(address, tuple)
        if not quick or is_tls(sock):
            self._handle_with_pywsgi(sock, address, deadline)
            return
        handshake = self._quick_handshake(sock, address, deadline - now)
        if isinstance(handshake, _QuickHandshake):
            handshake.run()
        elif handshake:
            self._handle_with_pywsgi(sock, address, deadline, handshake)
        # else nothing came within handshake_timeout (slowloris), or the client left

    def _quick_handshake(
        self, sock: socket.socket, address: Any, timeout: float
    ) -> _QuickHandshake | bytes:
        """Read the request's head and return its handshake if it can take the quick path,
        else the bytes read, for pywsgi's handler (none if the client sent nothing
        within ``timeout`` seconds).

        (A method of its own so that the head's bytes are not kept for the session.)
        """
        sock.settimeout(max(0.0, timeout))
        self.idle.add(sock)
        try:
            data = sock.recv(MAX_HEAD_SIZE)
        except OSError:
            return b""
        finally:
            self.idle.discard(sock)
            sock.settimeout(None)
        head = parse_request_head(data)
        if head is None or head.method != "GET" or len(head.headers) > MAX_HEADERS or self.stopping:
            return data  # for pywsgi's handler (which refuses too many headers, too)
        handshake = _QuickHandshake(self, sock, address, head, data[head.size :])
        if not handshake.websocket:
            return data
        self._complete_quick_environ(handshake.environ, sock, head.target)
        return handshake

    def _complete_quick_environ(
        self, environ: dict[str, Any], sock: socket.socket, target: str
    ) -> None:
        """Add to the environ of a request on the quick path what ``handler_class`` adds
        to its own; nothing here (the quick path builds pywsgi's environ).

        Args:
            environ: the request's environ.
            sock: the client's socket.
            target: the request target as sent (path and query, still %-encoded).
        """

    def _log_quick_request(
        self, handshake: _QuickHandshake, status: str, length: int, started: float
    ) -> None:
        """Write the access log line of a request served on the quick path, in gevent's
        format (as ``handler_class`` logs the others).

        Args:
            handshake: the request.
            status: its response's status (``"101"`` for an upgrade).
            length: the response body's length.
            started: when it began (``time.time()``).
        """
        log = self._access_log
        if log is not None:
            log.write(
                _access_line(handshake.address[0], handshake.requestline, status, length, started)
            )

    def _handle_with_pywsgi(
        self, sock: socket.socket, address: Any, deadline: float, data: bytes = b""
    ) -> None:
        """Let ``handler_class`` serve the connection, reading ``data`` before the socket.

        Args:
            sock: the client's socket.
            address: the client's address.
            deadline: when the first request's head must be in (the event loop's time).
            data: what the quick path read.
        """
        handler = cast(Handler, self.handler_class(sock, address, self))
        if data:
            handler.rfile.close()
            # One buffer for all of it: a read past the head gets what came behind it.
            handler.rfile = io.BufferedReader(
                _Replay(data, sock), max(io.DEFAULT_BUFFER_SIZE, len(data))
            )
        handler.head_deadline = deadline
        handler.handle()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, close WebSockets with 1001 and wait up to ``timeout`` seconds.

        Handlers still running after ``timeout`` are killed; close handlers run either
        way. A WebSocket whose handler (its close handler, say) still holds back its
        Close at ``timeout`` gets its Close 1001 then, before TCP closes. Idempotent.
        """
        self.close()
        self.stopping = True
        self._drop_waiting()
        for sock in list(self.idle):
            # A connection waiting for a request would hold stop() for the whole timeout.
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        for connection in list(self.connections):
            connection.request_close(1001, "server shutting down")
        # Parked connections have no greenlet in the pool: wait for them first.
        deadline = time.monotonic() + timeout
        if not self.connections.none_left.wait(timeout):
            for connection in list(self.connections):
                if connection.can_send:  # no Close sent yet: a handler is busy
                    # Sent from here, without waiting for the answer: the handler's
                    # greenlet is killed next.
                    connection.close_timeout = 0.0
                    connection.close(1001, "server shutting down")
        self.stop(timeout=max(0.0, deadline - time.monotonic()))
        # What woke from parking and is still busy past the deadline (stop() killed the
        # handlers the same way): its close handler runs as it dies.
        _kill(connection.owner for connection in self.connections)
        self.connections.none_left.wait(1.0)

    def do_handle(self, *args: Any) -> None:
        """Handle a new client: called by the accept loop, in the hub.

        Given ``spawn=`` (a pool, say), as gevent does. Else the event loop first
        waits for the client's first bytes (its request comes a moment after it
        connects, and a greenlet would only wait for it), then a worker handles it and
        waits for the next client once done (:class:`~geo_ws.io.connection.Workers`): a
        greenlet spawned and ended per connection cost a tenth of a handshake.
        """
        if not self._own_handlers:
            super().do_handle(*args)
            return
        sock: Any = args[0]
        watcher = read_watcher(sock)
        loop = watcher.loop
        timer = loop.timer(self.handshake_timeout)
        self._first_bytes[sock] = timer
        self._accepted[sock] = loop.now()
        watcher.start(self._first_bytes_came, args)
        timer.start(self._no_first_bytes, args)

    def _first_bytes_came(self, args: tuple[Any, ...]) -> None:
        self._stop_waiting(args[0])
        workers().run(partial(self._handle_client, args), None)  # a fresh context

    def _no_first_bytes(self, args: tuple[Any, ...]) -> None:
        self._stop_waiting(args[0])
        self.do_close(*args)  # nothing came within handshake_timeout (slowloris)

    def _stop_waiting(self, sock: Any) -> None:
        self._first_bytes.pop(sock).close()
        read_watcher(sock).stop()

    def _drop_waiting(self) -> None:
        """Close the connections whose first bytes have not come."""
        for sock in list(self._first_bytes):
            self._stop_waiting(sock)
            self.do_close(sock)

    def _handle_client(self, args: tuple[Any, ...]) -> None:
        me = getcurrent()
        self._busy.add(me)
        self._none_busy.clear()
        try:
            handle_accepted(self, *args)
        finally:
            self.do_close(*args)
            self._busy.discard(me)
            if not self._busy:
                self._none_busy.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, wait up to ``timeout`` seconds (default ``stop_timeout``) for
        the clients being handled, then kill their handlers."""
        super().stop(timeout)  # waits for and kills a pool's greenlets
        self._drop_waiting()
        if not self._none_busy.wait(self.stop_timeout if timeout is None else timeout):
            _kill(self._busy)
            self._none_busy.wait(1.0)


def _kill(greenlets: Iterable[greenlet | None]) -> None:
    """End each of ``greenlets`` with ``GreenletExit``, from the event loop."""
    loop = gevent.get_hub().loop
    for one in list(greenlets):
        if one is not None:
            loop.run_callback(one.throw, GreenletExit)


def _unpatched_references() -> list[str]:
    """What modules outside the standard library, gevent and geo_ws (its client keeps
    the original socket on purpose) hold of what gevent patched, as it was before:
    those modules were imported before the patching.

    Returns:
        ``module.attribute (original)`` for each, e.g. ``werkzeug.routing.map.Lock
        (_thread.allocate_lock)``.
    """
    originals = {
        id(get_original(module, name)): f"{module}.{name}"
        for module, names in _PATCHED_NAMES.items()
        for name in names
        if is_object_patched(module, name)
    }
    found = []
    for module_name, module in list(sys.modules.items()):
        top = module_name.partition(".")[0]
        if top in sys.stdlib_module_names or top in ("gevent", "greenlet", "geo_ws"):
            continue
        for attribute, value in list(getattr(module, "__dict__", {}).items()):
            original = originals.get(id(value))
            if original is not None:
                found.append(f"{module_name}.{attribute} ({original})")
    return found


def settle_process() -> None:
    """Before serving: keep the collector, the allocator and gevent's bookkeeping off
    the hot path (:func:`run` and :class:`geo_ws.server.gunicorn.Worker` call it).

    What exists now (the app, every module) lives as long as the process: frozen, it
    is left out of the full collections that thousands of connections trigger, which
    then walk the connections only. Young collections wait for 10 000 new objects
    instead of 700: a handshake allocates hundreds that die by reference counting, and
    a collection every few handshakes cost about 15 % of their rate. glibc keeps up to
    4 MiB of free heap instead of returning it at every large message (see
    ``_keep_heap``). And gevent stops recording each greenlet's spawning stack, a
    debugging aid that costs every connection a stack walk and a few objects
    (``GEVENT_TRACK_GREENLET_TREE=1`` keeps it).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])
    if "GEVENT_TRACK_GREENLET_TREE" not in os.environ:
        gevent.config.track_greenlet_tree = False
    _keep_heap()


#: glibc's ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _keep_heap() -> None:
    """Keep glibc from giving the top of the heap back at every message.

    By default glibc returns the heap's top to the system once 128 KiB of it is free,
    and raises that bar only after freeing a block of 128 KiB or more. Messages of
    tens of KiB then grow and shrink the heap at every one, each time faulting fresh
    pages in: 64 KiB echo lost a third of its throughput to ``brk`` and page faults.
    Free memory up to 4 MiB stays; blocks from 1 MiB (large messages) are mapped
    apart, as glibc does by default from 128 KiB. ``MALLOC_TRIM_THRESHOLD_`` and
    ``MALLOC_MMAP_THRESHOLD_`` in the environment win. Nothing happens without glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        mallopt(_M_TRIM_THRESHOLD, 4 * 2**20)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(_M_MMAP_THRESHOLD, 2**20)


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

    Before serving it tunes the process for many connections (:func:`settle_process`):
    it freezes what exists (the app and its modules live as long as the process), makes
    young garbage collections rarer, keeps glibc from returning the heap's top at every
    message and turns off gevent's greenlet-tree tracking.

    It warns when the process was patched too late: when modules imported before the
    patching kept blocking versions of what gevent patches.

    Raises:
        RuntimeError: the ``socket`` module is not monkey-patched by gevent.
    """
    if not is_module_patched("socket"):
        raise RuntimeError(PATCH_HINT)
    if not logging.getLogger().handlers:
        # Nothing configured logging: show the address and errors on stderr.
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    late = _unpatched_references()
    if late:
        logger.warning(LATE_PATCH_HINT, ", ".join(late[:5]) + (", ..." if len(late) > 5 else ""))
    server = Server((host, port), app, handshake_timeout=handshake_timeout)
    settle_process()
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
        # What settle_process() froze would outlive the modules at exit, and logging's
        # finalizers then fail noisily ("Exception ignored in: _removeHandlerRef").
        gc.unfreeze()
