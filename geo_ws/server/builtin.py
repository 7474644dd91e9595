"""geo_ws's built-in server: gevent's WSGI server, able to hand sockets over.

:func:`run` serves a Flask app's HTTP routes and WebSocket endpoints on one port
and shuts down cleanly on SIGTERM or SIGINT: it stops accepting, sends Close 1001
to every open WebSocket, waits (bounded) for the closing handshakes and the close
handlers, then returns.
"""

from __future__ import annotations

import errno
import gc
import io
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, cast

import gevent
from gevent.event import Event
from gevent.monkey import is_module_patched
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
from ..protocol.handshake import parse_request_head
from .http import (
    MAX_HEAD_SIZE,
    MAX_HEADERS,
    REQUEST_LINE,
    AccessLog,
    BadHead,
    HeadReader,
    access_line,
    bad_request,
    check_framing,
)
from .legacy import legacy_options
from .offer import end_request, offer_socket, recv_after
from .process import LATE_PATCH_HINT, PATCH_HINT, settle_process, unpatched_references
from .quick import QuickHandshake, Replay, direct_lane_for
from .wsgi import OpenConnections

__all__ = ["Server", "run"]

logger = logging.getLogger("geo_ws")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

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
        if not REQUEST_LINE.fullmatch(raw_requestline):
            raise bad_request("malformed request line")
        rfile = self.rfile
        # The header parser reads through self.rfile: let it see a bounded, checked view.
        self.rfile = HeadReader(rfile, MAX_HEAD_SIZE - len(raw_requestline))  # type: ignore[assignment]
        try:
            return super().read_request(raw_requestline)
        finally:
            self.rfile = rfile

    def MessageClass(self, *args: Any) -> Any:
        """Parse the request's headers (``read_request`` calls it), then check its framing."""
        headers = super().MessageClass(*args)
        check_framing(headers, self.request_version or "")
        return headers

    def client_error_response(self, error: BaseException) -> tuple[str, bytes] | None:
        """Answer a head refused by geo_ws's own checks; pywsgi answers the rest."""
        if isinstance(error, BadHead):
            self.close_connection = True
            return (error.status, error.response)
        return None

    def log_request(self) -> None:
        status = self.status or "000"
        if isinstance(status, bytes):  # as start_response stored it
            status = status.decode("latin-1")
        address = self.client_address
        line = access_line(
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
        offer_socket(environ, self._take_socket, cast(Server, self.server).legacy_options)
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
        return sock, recv_after(buffered, sock), server.connections

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
            end_request(environ)
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
                self.log = cast(Any, AccessLog(self.log))
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
        if isinstance(handshake, QuickHandshake):
            handshake.run()
        elif handshake:
            self._handle_with_pywsgi(sock, address, deadline, handshake)
        # else nothing came within handshake_timeout (slowloris), or the client left

    def _quick_handshake(
        self, sock: socket.socket, address: Any, timeout: float
    ) -> QuickHandshake | bytes:
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
        handshake = QuickHandshake(self, sock, address, head, data[head.size :])
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
        self, handshake: QuickHandshake, status: str, length: int, started: float
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
                access_line(handshake.address[0], handshake.requestline, status, length, started)
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
                Replay(data, sock), max(io.DEFAULT_BUFFER_SIZE, len(data))
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
    late = unpatched_references()
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
