"""The WebSocket client on gevent: the implementation behind :mod:`geo_ws.client`."""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from ssl import SSLWantReadError, SSLWantWriteError
from time import monotonic
from types import TracebackType
from typing import Any

from gevent import getcurrent, spawn
from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.event import Event
from gevent.hub import Waiter, get_hub
from gevent.lock import Semaphore
from gevent.monkey import get_original

from ..exceptions import ConnectionClosed, ConnectionClosedError, HandshakeError, InvalidState
from ..protocol.handshake import ClientHandshake
from ..protocol.machine import OPEN, Close, Failure, Message, Ping, Pong, Protocol
from ..protocol.machine import Event as ProtocolEvent

__all__ = ["ClientConnection", "connect"]

#: How many bytes one ``recv`` asks the kernel for.
READ_SIZE = 65536

_urandom = os.urandom
# The stdlib's socket class, even in a monkey-patched process.
_StdlibSocket: Any = get_original("socket", "socket")


def connect(
    url: str,
    *,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    subprotocols: Sequence[str] | None = None,
    timeout: float | None = 10.0,
    max_message_size: int | None = 2**20,
    ssl_context: gssl.SSLContext | None = None,
) -> ClientConnection:
    """Open a WebSocket connection: TCP (and TLS for ``wss://``), then the opening handshake.

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

    Returns:
        The open connection.

    Raises:
        ValueError: the URL is not a ``ws://`` or ``wss://`` URL.
        HandshakeError: the server refused the upgrade (its HTTP status, and the text
            of its response body, cut short, as the reason), or accepted it wrongly (a bad
            ``Sec-WebSocket-Accept``, a subprotocol that was not offered...).
        TimeoutError: the connection or the handshake took longer than ``timeout``.
        OSError: the TCP connection failed (``ConnectionRefusedError``...).
    """
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


# What the timer of a wait passes to the waiter.
_TIMED_OUT = object()

# Thrown into a greenlet waiting on a socket that another greenlet closed.
_CANCELLED = OSError(errno.EBADF, "the connection was closed by another greenlet")


class ClientConnection:
    """One open WebSocket connection, client side; made by :func:`connect`.

    A context manager: leaving the ``with`` block closes the connection (1000).
    Iterating over it yields messages until the server closes normally. Use it from
    the thread that opened it (its socket waits on that thread's gevent hub).

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

        # Non-blocking, waited on with watchers of our own: cheaper per message than
        # gevent's blocking wrappers, and a read timeout that writers do not share. A
        # plain socket becomes the stdlib's, whose recv and send are C calls.
        self._tls = isinstance(sock, gssl.SSLSocket)
        self._sock: Any = sock if self._tls else _StdlibSocket(fileno=sock.detach())
        self._sock.settimeout(0.0)
        self._hub = get_hub()
        fileno = self._sock.fileno()
        self._read_watcher = self._hub.loop.io(fileno, 1)
        self._write_watcher = self._hub.loop.io(fileno, 2)
        self._protocol = Protocol(client=True, max_message_size=max_message_size)
        self._inbox: deque[str | bytes] = deque()
        self._write_lock = Semaphore()
        self._blocked_writers = 0  # greenlets holding or waiting for the write lock
        self._reading = False
        # Set by send(): a reply cannot be there yet, so recv() waits before reading.
        self._awaiting_reply = False
        # Set by close() while it reads the rest of the stream itself.
        self._draining = False
        self._pings: dict[bytes, Event] = {}
        self._on_message: Callable[[str | bytes], None] | None = None  # _deliver() mode
        self._on_closed: Callable[[], None] | None = None
        self._done = Event()  # the socket is closed
        if received:
            self._handle(self._protocol.receive_data(received))

    # --- state ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the connection is over: a Close was received or it was lost."""
        return self.close_code is not None

    def __repr__(self) -> str:
        state = "open" if self.close_code is None else f"closed {self.close_code}"
        return f"<ClientConnection {self.url} {state}>"

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[str | bytes]:
        """Yield messages until the server closes with 1000 or 1001.

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

    # --- socket I/O -----------------------------------------------------------------------------

    def _wait(self, watcher: Any, deadline: float | None) -> None:
        """Block this greenlet until ``watcher`` fires, or the connection is closed.

        Raises:
            TimeoutError: ``deadline`` passed first.
        """
        hub = self._hub
        try:
            if deadline is None:
                hub.wait(watcher)
                return
            # One waiter for the socket and a timer: cheaper than a gevent.Timeout.
            # The timer counts from the loop's clock, which stands still while nothing
            # runs the loop (blocking code in an unpatched script): bring it up to now.
            hub.loop.update_now()
            timer = hub.loop.timer(max(0.0, deadline - monotonic()))
            waiter: Waiter[object] = Waiter(hub)
            watcher.start(waiter.switch, None)
            timer.start(waiter.switch, _TIMED_OUT)
            try:
                woken_by = waiter.get()
            finally:
                watcher.stop()
                timer.close()
            if woken_by is _TIMED_OUT:
                raise TimeoutError("timed out waiting for the server")
        except OSError as exc:
            if exc is not _CANCELLED:
                raise
            # Another greenlet closed the connection: the caller finds it closed.

    def _write(self, frame: bytes) -> None:
        """Write one frame whole, without a time limit; a lost connection ends with 1006.

        Raises:
            ConnectionClosedError: the socket failed.
        """
        sock = self._sock
        try:
            sent = 0
            if not self._blocked_writers:
                # Nobody waits to write: a send that takes the whole frame needs no lock
                # (greenlets only switch when one blocks), which is the usual case.
                try:
                    sent = sock.send(frame)
                except (BlockingIOError, SSLWantWriteError, SSLWantReadError):
                    pass
                if sent == len(frame):
                    return
            # The kernel's buffer is full: wait for room, in turn with other writers.
            self._blocked_writers += 1
            if getcurrent() is self._hub:
                # A _deliver() callback cannot wait: a greenlet finishes the write.
                spawn(self._finish_write, frame, sent)
                return
            try:
                self._write_rest(frame, sent)
            finally:
                self._blocked_writers -= 1
        except OSError as exc:
            self._abort(1006, f"connection lost: {exc}")
            raise self._closed_error() from exc

    def _write_rest(self, frame: bytes, sent: int) -> None:
        """Write ``frame[sent:]``, waiting for room, in turn with other writers.

        Raises:
            OSError: the socket failed.
        """
        with self._write_lock:
            rest = memoryview(frame)[sent:]
            while rest:
                self._wait(self._write_watcher, None)
                try:
                    rest = rest[self._sock.send(rest) :]
                except (BlockingIOError, SSLWantWriteError, SSLWantReadError):
                    pass

    def _finish_write(self, frame: bytes, sent: int) -> None:
        """The rest of a write started in the hub (its writer is already counted)."""
        try:
            self._write_rest(frame, sent)
        except OSError as exc:
            self._abort(1006, f"connection lost: {exc}")
        finally:
            self._blocked_writers -= 1

    def _write_quietly(self, frame: bytes) -> None:
        """Write a control frame on the read path, where a failed write shows up later."""
        try:
            self._write(frame)
        except ConnectionClosed:
            pass

    # --- sending --------------------------------------------------------------------------------

    def send(self, data: str | bytes | bytearray | memoryview) -> None:
        """Send one message: text for a ``str``, binary for anything bytes-like.

        Blocks only while the kernel's send buffer is full (the server is not reading).

        Raises:
            ConnectionClosed: the connection is closed or closing.
            TypeError: ``data`` is of another type.
        """
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"can only send str or bytes-like, not {type(data).__name__}")
        protocol = self._protocol
        if protocol.state is not OPEN:
            raise self._closed_error()
        self._write(
            protocol.send_text(data) if isinstance(data, str) else protocol.send_binary(data)
        )
        self._awaiting_reply = True

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
        deadline = None if timeout is None else monotonic() + timeout
        if self._reading:
            raise InvalidState("another greenlet is already reading this connection")
        self._reading = True
        try:
            while not inbox:
                self._receive(deadline)
        finally:
            self._reading = False
        return inbox.popleft()

    def _start_reading(self) -> None:
        if self._reading:
            raise InvalidState("another greenlet is already reading this connection")
        self._reading = True

    def _receive(self, deadline: float | None) -> None:
        """Read once from the socket (waiting if needed) and act on what it completes.

        Raises:
            ConnectionClosed: the connection is closed (nothing more will come).
            TimeoutError: ``deadline`` passed first.
        """
        if self._done.is_set():
            raise self._closed_error()
        if self._awaiting_reply:
            self._awaiting_reply = False
            # Just after a send, reading first would nearly always fail (a syscall and
            # an exception per message): wait first. TLS may hold decrypted bytes that
            # the socket does not show, so it always reads first.
            if not self._tls and (deadline is None or deadline - monotonic() > 0.001):
                self._wait(self._read_watcher, deadline)  # then read below
        blocked_on = self._read_once()
        if blocked_on is not None:
            self._wait(blocked_on, deadline)  # the caller loops: it reads again next

    def _read_once(self) -> Any:
        """Read what the socket has, without waiting, and act on it.

        Returns:
            None after progress (bytes or the end of the stream), else the watcher to
            wait on: the read watcher, or the write one when TLS must write first.
        """
        try:
            data = self._sock.recv(READ_SIZE)
        except (BlockingIOError, SSLWantReadError):
            return self._read_watcher
        except SSLWantWriteError:  # TLS wants to write first (rare)
            return self._write_watcher
        except OSError:
            data = b""  # a reset, or closed by another greenlet: an end of stream
        protocol = self._protocol
        if data:
            events = protocol.receive_data(data)
            # Fast path: one data message, the usual case under load.
            if len(events) == 1 and type(events[0]) is Message:
                self._inbox.append(events[0].data)
                return None
        else:
            events = protocol.receive_eof()
            if not events:  # after the server's Close: the stream is over
                self._shutdown()
                return None
        self._handle(events)
        return None

    # --- callbacks (the load tool's closed loops) -----------------------------------------------

    def _deliver(
        self, on_message: Callable[[str | bytes], None], on_closed: Callable[[], None]
    ) -> None:
        """Internal: hand every message to ``on_message`` as it arrives, instead of :meth:`recv`.

        The callbacks run in gevent's hub (no greenlet switch per message, which is what
        ``geo-ws load``'s ``echo`` saves): they must not block, but they may :meth:`send`.
        Pings are answered as usual; ``on_closed()`` runs once the connection is over.
        Used by :mod:`geo_ws.load.scenarios`; not part of the client's API.

        Raises:
            InvalidState: a greenlet is already reading.
        """
        self._start_reading()
        self._on_message = on_message
        self._on_closed = on_closed
        self._read_watcher.start(self._pump)
        self._pump_messages()

    def _pump(self) -> None:
        """The read watcher's callback in :meth:`_deliver` mode (runs in the hub)."""
        if self._read_once() is self._write_watcher:
            # TLS wants to write before it reads: let a greenlet wait for that.
            self._read_watcher.stop()
            spawn(self._resume_pump)
            return
        self._pump_messages()

    def _resume_pump(self) -> None:
        try:
            self._wait(self._write_watcher, None)
        finally:
            if not self._done.is_set():
                self._read_watcher.start(self._pump)

    def _pump_messages(self) -> None:
        """Hand queued messages to the callback; once closed, call ``on_closed``."""
        inbox, on_message = self._inbox, self._on_message
        assert on_message is not None
        while inbox:
            on_message(inbox.popleft())
        if self.close_code is not None and self._on_closed is not None:
            on_closed, self._on_closed = self._on_closed, None
            self._read_watcher.stop()
            self._reading = False
            on_closed()

    def _handle(self, events: list[ProtocolEvent]) -> None:
        """Act on parsed events: queue messages, answer pings and the closing handshake."""
        protocol = self._protocol
        for event in events:
            if type(event) is Message:
                self._inbox.append(event.data)
            elif type(event) is Ping:
                if protocol.state is OPEN:
                    self._write_quietly(protocol.send_pong(event.payload))
            elif type(event) is Pong:
                waiter = self._pings.pop(event.payload, None)
                if waiter is not None:
                    waiter.set()
            elif type(event) is Close:
                if not protocol.close_received:  # the stream ended without a Close frame
                    self._abort(1006, "")
                    continue
                if not protocol.close_sent:
                    # Echo the server's code (RFC 6455 section 5.5.1); 1005 echoes as empty.
                    self._write_quietly(protocol.send_close(event.code, event.reason))
                self._set_closed(event.code, event.reason)
                if not self._draining:
                    # The server should close TCP first, but nobody waits for it here.
                    self._shutdown()
            elif type(event) is Failure:
                if not protocol.close_sent:
                    self._write_quietly(protocol.send_close(event.code, event.reason))
                self._abort(event.code, event.reason)

    # --- pings ----------------------------------------------------------------------------------

    def ping(self, data: bytes | None = None, timeout: float | None = 10.0) -> float:
        """Send a Ping and wait for its Pong.

        Messages received meanwhile are kept for :meth:`recv`. Works while another greenlet
        waits in :meth:`recv` (that greenlet then reads the Pong).

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
        payload = _urandom(4) if data is None else bytes(data)
        if payload in self._pings:
            raise ValueError("a ping with this payload already waits for its pong")
        if self._protocol.state is not OPEN:
            raise self._closed_error()
        frame = self._protocol.send_ping(payload)
        waiter = Event()
        self._pings[payload] = waiter
        start = monotonic()
        try:
            self._write(frame)
            self._wait_for(waiter, timeout)
            if payload in self._pings:  # woken by the close: the Pong handler pops its entry
                raise self._closed_error()
        finally:
            self._pings.pop(payload, None)
        return monotonic() - start

    def _wait_for(self, event: Event, timeout: float | None) -> None:
        """Wait until ``event`` is set: read ourselves, or let the reading greenlet do it.

        Raises:
            TimeoutError: ``timeout`` passed first.
            ConnectionClosed: the connection closed meanwhile (only when reading ourselves).
        """
        if self._reading:
            if not event.wait(timeout):
                raise TimeoutError("timed out waiting for the server")
            return
        deadline = None if timeout is None else monotonic() + timeout
        self._start_reading()
        try:
            while not event.is_set():
                self._receive(deadline)
        finally:
            self._reading = False

    # --- closing --------------------------------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "", timeout: float | None = 5.0) -> None:
        """Close the connection with a closing handshake; does nothing if already closed.

        Sends a Close frame, then waits (bounded) for the server's Close and for the end
        of the TCP stream. Messages that arrive meanwhile are kept for :meth:`recv`.
        :attr:`close_code` is then the code the server answered with (usually ``code``),
        or 1006 if it did not answer within ``timeout``.

        Args:
            code: the close code (1000, 1001, 3000-4999...).
            reason: a short reason, cut to fit in the frame.
            timeout: seconds the closing handshake may take; None waits without limit.

        Raises:
            ValueError: ``code`` may not be sent in a Close frame.
        """
        if self._done.is_set():
            return
        protocol = self._protocol
        if protocol.state is OPEN:
            try:
                self._write(protocol.send_close(code, reason))
            except ConnectionClosed:
                return
        try:
            if self._reading:
                # The reading greenlet sees the server's Close and shuts the socket.
                self._done.wait(timeout)
            else:
                self._draining = True
                self._wait_for(self._done, timeout)
        except (TimeoutError, ConnectionClosed):
            pass
        finally:
            self._draining = False
            if not self._done.is_set():
                self._abort(1006, "")

    def _set_closed(self, code: int, reason: str) -> None:
        """Record how the connection ended (the first record wins)."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        for waiter in self._pings.values():
            waiter.set()  # wake ping() callers: no Pong will come

    def _abort(self, code: int, reason: str) -> None:
        """End the connection at once: record ``code`` and close the socket."""
        self._set_closed(code, reason)
        self._shutdown()

    def _shutdown(self) -> None:
        """Close the socket; the connection is over."""
        if self.close_code is None:
            self._set_closed(1006, "")
        if self._done.is_set():
            return
        self._done.set()
        if self._on_closed is not None:
            # _deliver mode: nobody waits, nothing to cancel; on_closed runs in the hub.
            self._read_watcher.stop()
            self._hub.loop.run_callback(self._pump_messages)
        # A greenlet still waiting on this socket would otherwise wait forever.
        for watcher in (self._read_watcher, self._write_watcher):
            self._hub.cancel_wait(watcher, _CANCELLED, True)
        self._sock.close()

    def _closed_error(self) -> ConnectionClosed:
        """The exception for an operation on a closed (or closing) connection."""
        if self.close_code is None:  # our Close is sent, the server's not received yet
            return ConnectionClosedError(1006, "the connection is closing")
        return ConnectionClosed.for_code(self.close_code, self.close_reason or "")
