"""The WebSocket client on gevent: the implementation behind :mod:`geo_ws.client`.

Only the opening handshake's I/O lives here (the handshake itself is
:class:`~geo_ws.protocol.handshake.ClientHandshake`): the connection is then the server's
:class:`~geo_ws.io.connection.Connection` in client mode, so reading, writing, limits,
pings and the closing handshake are the same code on both sides.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from time import monotonic
from types import TracebackType
from typing import TYPE_CHECKING, Literal, TypeVar, overload

from gevent import getcurrent, spawn
from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.event import Event
from gevent.hub import get_hub
from greenlet import greenlet

from ..exceptions import ConnectionClosed, ConnectionClosedError, HandshakeError, InvalidState
from ..protocol.handshake import ClientHandshake
from .connection import CloseRequest, Connection, Interrupted, fresh_clock

if TYPE_CHECKING:
    from .resuming import ResumingConnection

__all__ = ["ClientConnection", "connect"]


# The overloads say which class connect() returns; the signature is the same.
@overload
def connect(
    url: str,
    *,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    subprotocols: Sequence[str] | None = None,
    timeout: float | None = 10.0,
    max_message_size: int | None = 2**20,
    ssl_context: gssl.SSLContext | None = None,
    resume: Literal[False] = False,
) -> ClientConnection: ...


@overload
def connect(
    url: str,
    *,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    subprotocols: Sequence[str] | None = None,
    timeout: float | None = 10.0,
    max_message_size: int | None = 2**20,
    ssl_context: gssl.SSLContext | None = None,
    resume: Literal[True],
) -> ResumingConnection: ...


def connect(
    url: str,
    *,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    subprotocols: Sequence[str] | None = None,
    timeout: float | None = 10.0,
    max_message_size: int | None = 2**20,
    ssl_context: gssl.SSLContext | None = None,
    resume: bool = False,
) -> ClientConnection | ResumingConnection:
    """Open a WebSocket connection: TCP (and TLS for ``wss://``), then the opening handshake.

    With ``resume=True`` the connection comes back by itself after a drop and resumes
    (an endpoint with ``recovery=``; see :class:`~geo_ws.io.resuming.ResumingConnection`
    and docs/recovery.md).

    Args:
        url: ``ws://host[:port]/path[?query]`` or ``wss://...``.
        headers: extra request headers (``Origin``, ``Authorization``, cookies...).
        subprotocols: subprotocols to offer in ``Sec-WebSocket-Protocol``, preferred first.
        timeout: seconds the TCP connection and the handshake may take together; None
            waits without limit.
        max_message_size: largest message accepted from the server, in bytes; None for no
            limit. A larger one fails the connection with 1009.
        ssl_context: the TLS context for ``wss://``; by default gevent's
            ``create_default_context()``, which verifies the server's certificate.
        resume: reconnect and resume after a drop; ``subprotocols`` may not be given
            then (the resume wire is the subprotocol).

    Returns:
        The open connection: a :class:`~geo_ws.io.resuming.ResumingConnection` with
        ``resume=True``.

    Raises:
        ValueError: the URL is not a ``ws://`` or ``wss://`` URL.
        HandshakeError: the server refused the upgrade (its HTTP status, and the text
            of its response body, cut short, as the reason), or accepted it wrongly (a bad
            ``Sec-WebSocket-Accept``, a subprotocol that was not offered...).
        TimeoutError: the connection or the handshake took longer than ``timeout``.
        OSError: the TCP connection failed (``ConnectionRefusedError``...).
    """
    if resume:
        if subprotocols:
            raise ValueError("resume=True speaks its own subprotocol: pass no subprotocols")
        from .resuming import ResumingConnection  # here: it is built on this module

        return ResumingConnection(
            url,
            headers=headers,
            timeout=timeout,
            max_message_size=max_message_size,
            ssl_context=ssl_context,
        )
    handshake = ClientHandshake(url, headers=headers, subprotocols=subprotocols)
    deadline = None if timeout is None else monotonic() + timeout
    sock = gsocket.create_connection((handshake.host, handshake.port), timeout=timeout)
    try:
        # Small frames go out at once: Nagle's delay would show up in every latency.
        sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        if handshake.secure:
            context = ssl_context or gssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=handshake.host)
        sock.sendall(handshake.request())
        buffer = b""
        while (head := handshake.parse_response(buffer)) is None:
            buffer += _recv_by(sock, deadline, 4096)
        rest = buffer[head.size :]
        if head.status != 101:
            raise handshake.refusal(head, _refusal_body(sock, head.refusal_length, rest))
        subprotocol = handshake.accept(head)
    except BaseException:
        sock.close()
        raise
    return ClientConnection(
        sock,
        url=url,
        subprotocol=subprotocol,
        response_headers=head.headers,
        max_message_size=max_message_size,
        received=rest,
    )


def _recv_by(sock: gsocket.socket, deadline: float | None, size: int) -> bytes:
    """Read at most ``size`` bytes of the handshake response by ``deadline``.

    Raises:
        HandshakeError: the server closed the connection.
        TimeoutError: the deadline passed first.
    """
    if deadline is None:
        sock.settimeout(None)
    else:
        remaining = deadline - monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out during the opening handshake")
        sock.settimeout(remaining)
    chunk = sock.recv(size)
    if not chunk:
        raise HandshakeError(0, "connection closed during the opening handshake")
    return chunk


def _refusal_body(sock: gsocket.socket, length: int, body: bytes) -> bytes:
    """The first ``length`` bytes of a refusal's body, read within a short bound."""
    deadline = monotonic() + 1.0
    try:
        while len(body) < length:
            body += _recv_by(sock, deadline, length - len(body))
    except (OSError, HandshakeError):
        pass  # the status alone is reason enough
    return body


_C = TypeVar("_C", bound="_Client")


class _Client:
    """What both clients share: their state, ``with``, and iteration."""

    url: str
    close_code: int | None

    @property
    def closed(self) -> bool:
        """Whether the connection is over."""
        return self.close_code is not None

    def __repr__(self) -> str:
        state = "open" if self.close_code is None else f"closed {self.close_code}"
        return f"<{type(self).__name__} {self.url} {state}>"

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[str | bytes]:
        """Yield messages until the connection ends with 1000 or 1001.

        Raises:
            ConnectionClosedError: the connection ended with another code.
        """
        while True:
            try:
                yield self.recv()
            except ConnectionClosed as exc:
                if exc.code in (1000, 1001):
                    return
                raise

    def recv(self, timeout: float | None = None) -> str | bytes:
        """Wait for the next message (see the subclasses)."""
        raise NotImplementedError

    def close(self, code: int = 1000, reason: str = "", timeout: float | None = 5.0) -> None:
        """Close the connection (see the subclasses)."""
        raise NotImplementedError


class ClientConnection(_Client):
    """One open WebSocket connection, client side; made by :func:`connect`.

    A context manager: leaving the ``with`` block closes the connection (1000).
    Iterating over it yields messages until the server closes normally. Use it from
    the thread that opened it (its socket waits on that thread's gevent hub).

    A :class:`~geo_ws.io.connection.Connection` in client mode does the I/O. Its reader
    is served like a server's connection: while nothing comes, the event loop watches
    the socket and no greenlet waits; what arrives is queued for :meth:`recv`.

    Args:
        sock: the connected socket (gevent's, plain or TLS), after the handshake.
        url: the URL the connection was opened with.
        subprotocol: the subprotocol the server chose, if any.
        response_headers: the handshake response's headers, names in lower case.
        max_message_size: largest message accepted, in bytes; None for no limit.
        received: bytes the server sent right after its handshake response.
    """

    def __init__(
        self,
        sock: gsocket.socket,
        *,
        url: str,
        subprotocol: str | None = None,
        response_headers: dict[str, str] | None = None,
        max_message_size: int | None = 2**20,
        received: bytes = b"",
    ) -> None:
        self.url = url
        """The URL the connection was opened with."""
        self.subprotocol = subprotocol
        """The subprotocol the server chose, or None."""
        self.response_headers: dict[str, str] = response_headers or {}
        """The headers of the handshake response; names in lower case."""
        self.close_code: int | None = None
        """None while open; then the code of the server's Close frame (1005 if it had
        none), the code this client failed the connection with after a protocol error,
        or 1006 if the connection ended without a Close frame."""
        self.close_reason: str | None = None
        """None while open; then the reason that goes with :attr:`close_code`."""

        sock.settimeout(None)  # the handshake's timeout must not end an idle connection
        self._connection = Connection(
            sock, client=True, max_message_size=max_message_size, received=received
        )
        self._inbox: deque[str | bytes] = deque()
        self._arrived = Event()  # set when a message is queued or the connection is over
        self._receiving = False  # a greenlet waits in recv()
        self._pings: dict[bytes, Event] = {}
        self._on_message: Callable[[str | bytes], None] | None = None  # _deliver() mode
        self._on_closed: Callable[[], None] | None = None
        self._server: greenlet | None = None  # the greenlet running _serve, if any
        self._done = Event()  # the connection is over
        self._hub = get_hub()
        # Read what came with the handshake response, then park (or read on, under TLS).
        spawn(self._serve)

    # --- the reader -----------------------------------------------------------------------------

    def _serve(self) -> None:
        """Read what has arrived; park once nothing is left, or finish the closing."""
        connection = self._connection
        self._server = getcurrent()
        try:
            while True:
                message = connection.receive_nowait()
                if message is None:
                    self._server = None
                    connection.park(self._serve, in_loop=self._in_loop)
                    return
                self._take(message)
        except ConnectionClosed as exc:
            # Recorded first: a send from another greenlet meanwhile says how it ended.
            self._set_closed(exc.code, exc.reason)
            connection.close(connection.echo_code)  # answer the server's Close, close TCP
        except Interrupted:  # close() asked for it
            request = connection.close_request or CloseRequest(1000, "", False)
            connection.close(request.code, request.reason)
        self._server = None
        self._end()

    def _in_loop(self) -> bool:
        """In the event loop, the socket readable: take the messages that came, if that
        is all that came (the usual case: no greenlet switch to read them)."""
        messages = self._connection.messages_nowait()
        if messages is None:
            return False  # a ping, a Close...: _serve handles it all, in order
        on_message = self._on_message
        if on_message is not None:  # _deliver(), the load tool's loop: one call less
            for message in messages:
                on_message(message.data)
        else:
            for message in messages:
                self._take(message.data)
        return True

    def _take(self, message: str | bytes) -> None:
        """Queue a message for recv(), or hand it to the _deliver() callback."""
        on_message = self._on_message
        if on_message is None:
            self._inbox.append(message)
            self._arrived.set()
        else:
            on_message(message)

    def _set_closed(self, code: int, reason: str) -> None:
        """Record how the connection ended (the first record wins)."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason

    def _end(self) -> None:
        """The connection is over: wake every waiter, tell a _deliver() caller."""
        ended = self._connection.ended or (1006, "")
        self._set_closed(*ended)
        self._done.set()
        self._arrived.set()
        for waiter in self._pings.values():
            waiter.set()  # wake ping() callers: no Pong will come
        on_closed, self._on_closed = self._on_closed, None
        if on_closed is not None:
            self._pump()
            on_closed()

    def _wait(self, event: Event, timeout: float | None) -> bool:
        """Wait for ``event`` at most ``timeout`` seconds; whether it is set."""
        if timeout is not None:
            fresh_clock()  # the timer starts from the loop's clock
        return event.wait(timeout)

    # --- sending --------------------------------------------------------------------------------

    def send(self, data: str | bytes | bytearray | memoryview) -> None:
        """Send one message: text for a ``str``, binary for anything bytes-like.

        Blocks only while the kernel's send buffer is full (the server is not reading);
        never in a :meth:`_deliver` callback that runs in the event loop.

        Raises:
            ConnectionClosed: the connection is closed or closing.
            TypeError: ``data`` is of another type.
        """
        connection = self._connection
        if not connection.send(data):
            raise self._closed_error()
        if getcurrent() is not self._hub:
            connection.wait_written()

    # --- receiving ------------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> str | bytes:
        """Wait for the next message.

        Args:
            timeout: seconds to wait; None waits without limit.

        Returns:
            ``str`` for a text message, ``bytes`` for a binary one.

        Raises:
            TimeoutError: no message within ``timeout``; the connection stays usable.
            ConnectionClosed: the connection is closed (``code`` and ``reason`` say how);
                messages received before the Close are returned first.
            InvalidState: another greenlet is already reading.
        """
        inbox = self._inbox
        if inbox:
            return inbox.popleft()
        self._check_no_reader()
        self._receiving = True
        deadline = None if timeout is None else monotonic() + timeout
        try:
            while not inbox:
                if self._done.is_set():
                    raise self._closed_error()
                self._arrived.clear()
                remaining = None if deadline is None else max(0.0, deadline - monotonic())
                if not self._wait(self._arrived, remaining):
                    raise TimeoutError("timed out waiting for the server")
        finally:
            self._receiving = False
        return inbox.popleft()

    def _check_no_reader(self) -> None:
        if self._receiving or self._on_message is not None:
            raise InvalidState("another greenlet is already reading this connection")

    # --- callbacks (the load tool's closed loops) -----------------------------------------------

    def _deliver(
        self, on_message: Callable[[str | bytes], None], on_closed: Callable[[], None]
    ) -> None:
        """Internal: hand every message to ``on_message`` as it arrives, instead of :meth:`recv`.

        The callbacks usually run in gevent's hub (no greenlet switch per message, which
        is what ``geo-ws load``'s ``echo`` saves), else in the greenlet that reads the
        connection: they must not block, but they may :meth:`send`. Pings are answered as usual;
        ``on_closed()`` runs once the connection is over. Used by
        :mod:`geo_ws.load.scenarios`; not part of the client's API.

        Raises:
            InvalidState: a greenlet is already reading.
        """
        self._check_no_reader()
        self._on_message = on_message
        self._on_closed = on_closed
        self._pump()
        if self._done.is_set():
            self._on_closed = None
            on_closed()

    def _pump(self) -> None:
        """Hand the queued messages to the _deliver() callback."""
        inbox, on_message = self._inbox, self._on_message
        if on_message is not None:
            while inbox:
                on_message(inbox.popleft())

    # --- pings ----------------------------------------------------------------------------------

    def ping(self, data: bytes | None = None, timeout: float | None = 10.0) -> float:
        """Send a Ping and wait for its Pong.

        Messages received meanwhile are kept for :meth:`recv`. Works while another greenlet
        waits in :meth:`recv`.

        Args:
            data: the ping's payload (at most 125 bytes); 4 random bytes by default.
            timeout: seconds to wait for the Pong; None waits without limit.

        Returns:
            The round-trip time in seconds.

        Raises:
            TimeoutError: no Pong within ``timeout``.
            ConnectionClosed: the connection is closed, or closed while waiting.
            ValueError: ``data`` is longer than 125 bytes, or already waits for its Pong.
        """
        payload = os.urandom(4) if data is None else bytes(data)
        if payload in self._pings:
            raise ValueError("a ping with this payload already waits for its pong")
        waiter = Event()
        self._pings[payload] = waiter
        start = monotonic()
        try:
            if not self._connection.ping(payload, lambda: self._ponged(payload)):
                raise self._closed_error()
            if not self._wait(waiter, timeout):
                raise TimeoutError("timed out waiting for the server")
            if payload in self._pings:  # woken by the end: the Pong handler pops its entry
                raise self._closed_error()
        finally:
            self._pings.pop(payload, None)
        return monotonic() - start

    def _ponged(self, payload: bytes) -> None:
        waiter = self._pings.pop(payload, None)
        if waiter is not None:
            waiter.set()

    # --- closing --------------------------------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "", timeout: float | None = 5.0) -> None:
        """Close the connection with a closing handshake; does nothing if already closed.

        Sends a Close frame, then waits (bounded) for the server's Close. Messages that
        arrived before are kept for :meth:`recv`. :attr:`close_code` is then the code the
        server answered with (usually ``code``), or 1006 if it did not answer within
        ``timeout``.

        Args:
            code: the close code (1000, 1001, 3000-4999...).
            reason: a short reason, cut to fit in the frame.
            timeout: seconds the closing handshake may take; None waits without limit.

        Raises:
            ValueError: ``code`` may not be sent in a Close frame.
        """
        if self._done.is_set():
            return
        connection = self._connection
        connection.close_timeout = _FOREVER if timeout is None else timeout
        connection.request_close(code, reason)
        if getcurrent() is self._server:
            # Called by a _deliver() callback, in the reader: close here; the reader then
            # finds the connection closed.
            connection.close(code, reason)
            self._end()
            return
        # The reader runs the handshake, bounded by the same timeout (then a little more
        # for the last flush): past it, the connection is dropped.
        if not self._wait(self._done, None if timeout is None else timeout + 1.0):
            connection.abort()
            self._end()

    def _closed_error(self) -> ConnectionClosed:
        """The exception for an operation on a closed (or closing) connection."""
        if self.close_code is None:  # our Close is sent, the server's not received yet
            return ConnectionClosedError(1006, "the connection is closing")
        return ConnectionClosed.for_code(self.close_code, self.close_reason or "")


# Connection.close takes seconds: "no limit" is a very long time.
_FOREVER = 365 * 24 * 3600.0
