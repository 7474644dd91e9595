"""The client that resumes: ``geo_ws.client.connect(url, resume=True)``.

It speaks the resume wire (:mod:`geo_ws.protocol.resume`, docs/recovery.md) over a
:class:`~geo_ws.io.client.ClientConnection`, and when that connection drops (a network
blip, a server restart, a deploy's 1001) it opens another with a jittered
:class:`~geo_ws.io.backoff.Backoff` and resumes its session: :meth:`ResumingConnection.recv`
goes on returning every message in order, once. A message it had already received is
dropped by its offset.

When the server could not recover what was missed (the client stayed away longer than
the endpoint's window, or the log was lost), :meth:`~ResumingConnection.recv` raises
:class:`MessagesLost` once, at that point of the stream: what came before is complete,
what comes after is live; the connection goes on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from time import monotonic
from typing import Any

from gevent import Greenlet, sleep, spawn
from gevent import ssl as gssl
from gevent.event import Event

from ..exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    HandshakeError,
    ProtocolError,
    WebSocketError,
)
from ..protocol.resume import SUBPROTOCOL, Hello, Resume, Start, parse_hello, parse_positioned
from .backoff import Backoff
from .client import ClientConnection, _Client, connect
from .connection import fresh_clock

__all__ = ["FINAL_CODES", "MessagesLost", "ResumingConnection"]

FINAL_CODES = frozenset({1000, 1002, 1003, 1007, 1008, 1009, 1010, *range(3000, 5000)})
"""Close codes after which the client does not come back: the server or the app closed
it on purpose (1000, 3000-4999), or refused what it sent. After any other (1001 going
away, 1006 lost, 1011, 1012 restart...) it reconnects and resumes."""

# Statuses of a refused reconnection that are worth trying again: the server is
# restarting or overloaded (0: not HTTP at all, e.g. the connection was cut).
_RETRY_STATUSES = frozenset({0, 429, 500, 502, 503, 504})


class MessagesLost(WebSocketError):
    """Raised once by :meth:`ResumingConnection.recv` where a resume could not recover
    what the client missed: messages sent to it meanwhile are lost.

    The connection goes on: the next :meth:`~ResumingConnection.recv` returns live
    messages. The app should re-sync its state (fetch it anew).
    """

    def __init__(self, hello: Hello) -> None:
        what = "the same id" if hello.resumed else "a new id"
        super().__init__(f"resumed with {what}, but the messages missed meanwhile are lost")
        self.hello = hello
        """The server's hello: ``resumed`` says whether the id and rooms were kept."""


class ResumingConnection(_Client):
    """A WebSocket connection that comes back by itself; made by
    ``geo_ws.client.connect(url, resume=True)``.

    Sends while it is reconnecting wait for the new connection, at most
    ``send_timeout`` seconds; a message sent just before a drop may be lost (the resume
    covers what the server sends, not what the client sends).

    Args:
        url: ``ws://`` or ``wss://`` URL of an endpoint with ``recovery=``.
        headers: extra request headers, sent on every (re)connection.
        timeout: seconds each connection's handshake, and the server's hello, may take.
        max_message_size: largest message accepted from the server, in bytes.
        ssl_context: the TLS context for ``wss://``.
        backoff: the delays between reconnection attempts (default: 0.1 s doubling to
            5 s, full jitter).
        reconnect_for: how long one outage may last, in seconds, before the client gives
            up (then :meth:`recv` raises the last :class:`ConnectionClosed`); ``None``:
            for ever.
        send_timeout: how long :meth:`send` waits for a connection while reconnecting.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        timeout: float | None = 10.0,
        max_message_size: int | None = 2**20,
        ssl_context: gssl.SSLContext | None = None,
        backoff: Backoff | None = None,
        reconnect_for: float | None = 60.0,
        send_timeout: float = 10.0,
    ) -> None:
        self.url = url
        """The URL the connection was opened with."""
        self.id: str | None = None
        """The connection's id on the server (``ws.id``), from the last hello."""
        self.resumed = False
        """Whether the last reconnection got the same id and rooms back."""
        self.recovered = False
        """Whether the last reconnection also got every message missed meanwhile."""
        self.reconnects = 0
        """How many times the client came back after a drop."""
        self.last_drop: int | None = None
        """The close code of the last drop it came back from (1001: the server went
        away, 1006: the connection was lost...)."""
        self.close_code: int | None = None
        """None while open or reconnecting; then how it ended for good."""
        self.close_reason: str | None = None
        """None while open; then the reason that goes with :attr:`close_code`."""
        self._options: dict[str, Any] = {
            "headers": headers,
            "timeout": timeout,
            "max_message_size": max_message_size,
            "ssl_context": ssl_context,
        }
        self._backoff = backoff or Backoff()
        self._reconnect_for = reconnect_for
        self._send_timeout = send_timeout
        self._session: str | None = None  # the private session, from the hello
        self._epoch = ""
        self._offset = 0  # the last offset received: anything at or below is a duplicate
        self._inbox: deque[str | bytes | MessagesLost] = deque()
        self._arrived = Event()
        self._ready = Event()  # a connection is open and greeted
        self._closing = False
        self._connection, hello = self._open()
        self._greet(hello)
        self._reader: Greenlet[Any, None] = spawn(self._read)

    @property
    def connected(self) -> bool:
        """Whether a connection is open and greeted now (``False`` while reconnecting)."""
        return self._ready.is_set() and self.close_code is None

    # --- connecting -----------------------------------------------------------------------------

    def _open(self) -> tuple[ClientConnection, Hello]:
        """Open a connection, present the session, read the hello.

        Raises:
            HandshakeError: the endpoint has no recovery (101), or refused the upgrade.
            ProtocolError: the server's first message is not a hello.
            ConnectionClosed, OSError, TimeoutError: the connection failed.
        """
        timeout = self._options["timeout"]
        connection: ClientConnection = connect(
            self.url, subprotocols=[SUBPROTOCOL], **self._options
        )
        try:
            if connection.subprotocol != SUBPROTOCOL:
                raise HandshakeError(
                    101, f"{self.url} has no recovery: it did not pick {SUBPROTOCOL}"
                )
            first = (
                Start()
                if self._session is None
                else Resume(self._session, self._epoch, self._offset)
            )
            connection.send(first.encode())
            hello = parse_hello(connection.recv(timeout))
        except BaseException as exc:
            connection.close(1002 if isinstance(exc, ProtocolError) else 1000, timeout=1.0)
            raise
        return connection, hello

    def _greet(self, hello: Hello) -> None:
        """Take the hello's news: id, session, and the position to go on from."""
        reconnect = self._session is not None
        self.id = hello.id
        self._session = hello.session
        self.resumed = hello.resumed
        self.recovered = hello.recovered
        if not hello.recovered:
            # What was missed is gone: go on from where the log is now.
            self._epoch, self._offset = hello.epoch, hello.offset
            if reconnect:
                self._queue(MessagesLost(hello))
        self._ready.set()

    def _read(self) -> None:
        """The reader: queue each new message; reconnect after a drop; end for good."""
        while True:
            try:
                data = self._connection.recv()
            except ConnectionClosed as exc:
                self.last_drop = exc.code
                if self._closing or exc.code in FINAL_CODES or not self._reconnect():
                    self._end(exc.code, exc.reason)
                    return
                continue
            try:
                parsed = parse_positioned(data)
            except WebSocketError as exc:
                self._connection.close(1002, str(exc))
                continue  # the recv above then ends it: 1002 is final
            if isinstance(parsed, dict):
                continue  # a control message this client does not know (none yet)
            offset, message = parsed
            if offset > self._offset:
                self._offset = offset
                self._queue(message)

    def _reconnect(self) -> bool:
        """Open a new connection and resume, with backoff, within ``reconnect_for``.

        Returns:
            Whether it came back (else it gave up, or was closed meanwhile).
        """
        self._ready.clear()
        backoff = self._backoff
        deadline = None if self._reconnect_for is None else monotonic() + self._reconnect_for
        while not self._closing and (deadline is None or monotonic() < deadline):
            sleep(backoff.next())
            if self._closing:
                break
            try:
                self._connection, hello = self._open()
            except HandshakeError as exc:
                if exc.status not in _RETRY_STATUSES:
                    return False
            except ProtocolError:
                return False  # not a server of the resume wire any more
            except (OSError, TimeoutError, ConnectionClosed):
                pass  # not up yet
            else:
                backoff.reset()
                self.reconnects += 1
                self._greet(hello)
                return True
        return False

    # --- the app's side -------------------------------------------------------------------------

    def _queue(self, item: str | bytes | MessagesLost) -> None:
        self._inbox.append(item)
        self._arrived.set()

    def _end(self, code: int, reason: str) -> None:
        self.close_code = code
        self.close_reason = reason
        self._ready.set()  # wake senders: they find it closed
        self._arrived.set()

    def recv(self, timeout: float | None = None) -> str | bytes:
        """Wait for the next message, across reconnections.

        Args:
            timeout: the longest wait in seconds (``None``: no limit).

        Returns:
            The message without its offset: text as ``str``, binary as ``bytes``.

        Raises:
            MessagesLost: here the client came back without what it missed (once per
                such resume); call again for the next message.
            TimeoutError: no message within ``timeout``.
            ConnectionClosed: the connection is over for good; messages received before
                are returned first.
        """
        inbox = self._inbox
        deadline = None if timeout is None else monotonic() + timeout
        while not inbox:
            if self.close_code is not None:
                raise ConnectionClosed.for_code(self.close_code, self.close_reason or "")
            self._arrived.clear()
            remaining = None if deadline is None else max(0.0, deadline - monotonic())
            if remaining is not None:
                fresh_clock()
            if not self._arrived.wait(remaining):
                raise TimeoutError("timed out waiting for the server")
        item = inbox.popleft()
        if isinstance(item, MessagesLost):
            raise item
        return item

    def send(self, data: str | bytes | bytearray | memoryview) -> None:
        """Send one message; while reconnecting, wait for the new connection first.

        Raises:
            ConnectionClosed: the connection is over for good, or did not come back
                within ``send_timeout`` (1006).
            TypeError: ``data`` is of another type.
        """
        deadline = monotonic() + self._send_timeout
        while True:
            if self.close_code is not None:
                raise ConnectionClosed.for_code(self.close_code, self.close_reason or "")
            fresh_clock()
            if not self._ready.wait(max(0.0, deadline - monotonic())):
                raise ConnectionClosedError(1006, "reconnecting took longer than send_timeout")
            try:
                self._connection.send(data)
                return
            except ConnectionClosed:
                if monotonic() >= deadline:
                    raise
                sleep(0.01)  # dropped under us: the reader notices, and reconnects

    def ping(self, data: bytes | None = None, timeout: float | None = 10.0) -> float:
        """Send a Ping on the current connection and wait for its Pong (see
        :meth:`ClientConnection.ping <geo_ws.io.client.ClientConnection.ping>`).

        Returns:
            The round-trip time in seconds.

        Raises:
            ConnectionClosed: no connection now (reconnecting, or over).
            TimeoutError: no Pong within ``timeout``.
        """
        if not self.connected:
            raise ConnectionClosedError(1006, "not connected now")
        return self._connection.ping(data, timeout)

    def close(self, code: int = 1000, reason: str = "", timeout: float | None = 5.0) -> None:
        """Close for good, with a closing handshake (while reconnecting: at once, with
        ``code``); does nothing if already closed."""
        if self.close_code is not None:
            return
        self._closing = True
        if self._ready.is_set():
            self._connection.close(code, reason, timeout)
            self._reader.join(timeout=None if timeout is None else timeout + 1.0)
            code, reason = self._connection.close_code or 1006, self._connection.close_reason or ""
        if self.close_code is None:  # reconnecting, or the reader did not finish
            self._reader.kill()
            self._end(code, reason)
