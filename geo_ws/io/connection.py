"""One upgraded socket on gevent: frames in through the sans-I/O protocol, frames out
through a single writer.

The greenlet that owns a :class:`Connection` reads; any greenlet may send. An owner with
nothing to read can :meth:`~Connection.park` the connection and end: the event loop then
watches the socket, and a worker greenlet takes over when data or a close request comes,
so an idle connection costs no greenlet (and no stack).

Sending never blocks the caller: a frame is written straight into the socket's kernel
buffer when it has room and nothing is queued, otherwise it joins a bounded outbox
drained by one writer greenlet, so frames never interleave and a slow client never
stalls a broadcast. A client whose outbox overflows is closed with 1008.

Reading takes turns: a reader whose data keeps coming lets every other ready greenlet
run about every millisecond (:data:`TURN`), so one client's flood of small frames costs
the others milliseconds, not the flood's length.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, NamedTuple, TypeVar
from weakref import WeakKeyDictionary

import gevent
from gevent import Greenlet
from gevent.monkey import get_original
from greenlet import GreenletExit, getcurrent, greenlet

from .._compat.gevent import read_watcher, wait_readable
from ..exceptions import ConnectionClosed, WebSocketError
from ..protocol.deflate import PerMessageDeflate
from ..protocol.frames import EXTERNAL_CLOSE_CODES
from ..protocol.machine import Close, Event, Failure, Message, Ping, Pong, Protocol
from ..protocol.outgoing import Outgoing
from .ratelimit import RateLimit

__all__ = [
    "CloseRequest",
    "Connection",
    "Interrupted",
    "Workers",
    "fresh_clock",
    "is_tls",
    "workers",
]

logger = logging.getLogger("geo_ws")

#: How many bytes one ``recv`` asks for.
READ_SIZE = 2**17
#: How long a reader may keep the event loop, in seconds, while more data keeps coming,
#: before it lets every other ready greenlet run (one client's flood must not starve
#: the others, nor gunicorn's heartbeat).
TURN = 0.001
#: Messages handled between two looks at the clock (see _receive).
TURN_MESSAGES = 32
#: The least the protocol parses at a time, and the most at first (see _read_events).
MIN_PARSE_SIZE = 2**11
FIRST_PARSE_SIZE = 2**14
#: Queued frames are joined into sends of about this size (fewer syscalls).
BATCH_SIZE = 65536
#: Bytes waiting in the outbox past which a Ping's Pong replaces the one still queued
#: rather than joining it (a few hundred small Pongs; a peer that reads never gets there).
PONG_BACKLOG = 4096


# The OS thread's id, not the greenlet's that monkey-patching makes of it.
_thread_id: Callable[[], int] = get_original("_thread", "get_ident")

# Shared by connections that have never sent anything (idle ones): a deque costs over
# 600 bytes. Never appended to: _write swaps in a connection's own, kept from then on
# (one per burst would be garbage to collect, thousands per broadcast).
_NO_OUTBOX: deque[bytes | memoryview] = deque()
_NO_EVENTS: Iterator[Event] = iter(())


class _Flusher:
    """Writes, once per turn of the event loop, what every connection queued during it.

    One loop callback for all connections, not one per connection: a broadcast to
    thousands then allocates nothing per receiver.
    """

    __slots__ = ("_loop", "_pending", "_scheduled", "thread")

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self._pending: list[Connection] = []
        self._scheduled = False
        self.thread = _thread_id()
        """The OS thread of the event loop (made by _per_hub, in that thread)."""

    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        """Have the event loop call ``callback(*args)`` soon, from any OS thread: it is
        woken (it may be waiting for I/O), unlike with ``run_callback``."""
        self._loop.run_callback_threadsafe(callback, *args)

    def add(self, connection: Connection) -> None:
        self._pending.append(connection)
        if not self._scheduled:
            self._scheduled = True
            self._loop.run_callback(self._run)

    def _run(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for connection in pending:
            connection._flush()


class Workers:
    """Greenlets that run one job after another, for one event loop (:func:`workers`).

    A worker that is done waits for the next job rather than ending: a client that
    waits for each answer wakes its connection for every message, and a new greenlet
    each time would cost more than the message. At most :attr:`KEEP` wait.
    """

    KEEP = 64

    __slots__ = ("_hub", "_idle")

    def __init__(self, hub: Any) -> None:
        self._hub = hub
        self._idle: list[greenlet] = []

    def run(self, job: Callable[[], object], context: contextvars.Context | None) -> None:
        """Run ``job`` on a worker, in ``context``; call it from the hub.

        Returns once the job is done or blocks. A job killed with ``GreenletExit``
        ends its worker; other exceptions go to the hub's error handler.
        """
        idle = self._idle
        while idle:
            worker = idle.pop()
            if not worker.dead:  # (killed while it waited)
                break
        else:
            worker = greenlet(self._work, parent=self._hub)
        # The job runs in its own context (None: a fresh one, made if it is used); a
        # Context.run() per job would cost more.
        worker.gr_context = context
        worker.switch(job)

    def _work(self, job: Callable[[], object]) -> None:
        me = getcurrent()
        while True:
            try:
                job()
            except GreenletExit:
                return
            except BaseException:
                self._hub.handle_error(me, *sys.exc_info())
            del job  # not kept alive while the worker waits
            if len(self._idle) >= self.KEEP:
                return
            self._idle.append(me)
            job = self._hub.switch()  # until run() hands over the next one


T = TypeVar("T")


#: What geo_ws keeps per hub (one per thread), gone with its hub.
_PER_HUB: WeakKeyDictionary[Any, dict[str, Any]] = WeakKeyDictionary()


def _per_hub(name: str, make: Callable[[Any], T]) -> T:
    """``make(hub)`` once per hub, for this thread's hub."""
    hub: Any = gevent.get_hub()
    values = _PER_HUB.get(hub)
    if values is None:
        values = _PER_HUB[hub] = {}
    value: T | None = values.get(name)
    if value is None:
        value = values[name] = make(hub)
    return value


def workers() -> Workers:
    """The :class:`Workers` of this thread's event loop."""
    return _per_hub("workers", Workers)


def _read_buffer(hub: Any) -> memoryview:
    return memoryview(bytearray(READ_SIZE))


def is_tls(sock: socket.socket) -> bool:
    """Whether ``sock`` is a TLS socket (its bytes must go through its own methods)."""
    kind = type(sock)
    tls = _TLS_TYPES.get(kind)
    if tls is None:
        # On the type: a gevent socket's __getattr__ would raise for every plain socket.
        tls = _TLS_TYPES[kind] = hasattr(kind, "getpeercert")
    return tls


_TLS_TYPES: dict[type, bool] = {}


class CloseRequest(NamedTuple):
    """A close asked for by the app (or the server), to be carried out by the owner."""

    code: int
    reason: str
    error: bool
    """The connection failed (a handler's error): close handlers see no clean close."""


class Interrupted(Exception):
    """Raised inside :meth:`Connection.receive` when a close was requested meanwhile."""


class Connection:
    """The I/O of one WebSocket connection, either side (a server's, or a client's).

    Args:
        sock: the peer's (gevent) socket, already upgraded.
        recv: reads at most ``n`` bytes, ``b""`` at EOF; defaults to ``sock.recv``.
            Servers that buffer the request pass their buffered reader's ``read1``
            so that bytes read past the request head are not lost.
        max_message_size: the largest message accepted, in bytes (``None``: no limit);
            a larger one fails the connection with 1009.
        max_outbox_size: how many bytes may wait for a slow client before it is
            closed with 1008.
        close_timeout: how long the closing handshake and the last flush may take,
            in seconds, before the TCP connection is dropped.
        ping_interval: seconds between keepalive pings; ``None`` sends none.
        ping_timeout: seconds the peer has to answer a ping before the connection is
            closed with 1011 "keepalive ping timeout".
        deflate: the permessage-deflate state negotiated in the handshake, if any.
        client: True on the client side: frames sent are masked, frames received must not
            be, and each send is written at once (no server-wide burst to join it with).
        received: bytes read past the handshake response, parsed before the socket.
        rate_limit: the limits on the messages received (see :mod:`geo_ws.io.ratelimit`),
            checked by :meth:`receive` and :meth:`receive_nowait` (a client's
            :meth:`messages_nowait` has none).
    """

    # Slots: a server holds thousands of these, mostly idle.
    __slots__ = (
        "_buffer",
        "_client",
        "_context",
        "_direct",
        "_drained",
        "_ended",
        "_events",
        "_fd",
        "_flush_pending",
        "_flusher",
        "_in_loop",
        "_lost",
        "_outbox",
        "_outbox_bytes",
        "_overflowed",
        "_owner",
        "_parked",
        "_parse_size",
        "_ping",
        "_pong_callbacks",
        "_queued_pong",
        "_reading",
        "_received",
        "_received_bytes",
        "_recv",
        "_sent",
        "_sent_bytes",
        "_tcp_closed",
        "_timer",
        "_turn_end",
        "_turn_messages",
        "_unparsed",
        "_watcher",
        "_workers",
        "_writer",
        "close_request",
        "close_timeout",
        "deflate",
        "latency",
        "max_outbox_size",
        "on_round_trip",
        "ping_interval",
        "ping_timeout",
        "protocol",
        "rate_limit",
        "sock",
    )

    def __init__(
        self,
        sock: socket.socket,
        recv: Callable[[int], bytes] | None = None,
        *,
        max_message_size: int | None = 2**20,
        max_outbox_size: int = 16 * 2**20,
        close_timeout: float = 5.0,
        ping_interval: float | None = None,
        ping_timeout: float = 20.0,
        deflate: PerMessageDeflate | None = None,
        client: bool = False,
        received: bytes = b"",
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.sock = sock
        try:
            # Frames are whole messages and bursts are already joined into one write
            # (see _write): Nagle's algorithm would only hold small frames back until
            # the peer's delayed ACK, milliseconds later.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a Unix socket, a socketpair)
        self._recv = recv or sock.recv
        self._fd = sock.fileno()
        # gevent keeps descriptors non-blocking; os.write on one never switches greenlets.
        # Not under TLS: the bytes must go through the TLS layer, i.e. the socket's send.
        self._direct = not os.get_blocking(self._fd) and not is_tls(sock)
        # A client that waits for each answer has sent nothing more when we read again:
        # a read would fail (a system call and an exception) before gevent waits. Once a
        # read has emptied the kernel buffer, wait for the socket first, with gevent's own
        # primitive for its sockets. Only when reading the plain gevent socket itself.
        # A new connection starts that way: the client waits for the 101.
        # Such a socket is also read into the hub's buffer (see _read_events), and only
        # such a connection can park: its buffer says which it is.
        self._drained = True
        watcher = read_watcher(sock) if self._direct and self._recv == sock.recv else None
        self._watcher: Any = watcher  # None: a connection that cannot park
        self._buffer = None if watcher is None else _per_hub("read buffer", _read_buffer)
        self._client = client
        self.protocol = Protocol(max_message_size=max_message_size, client=client, deflate=deflate)
        self.deflate = deflate
        """The permessage-deflate state negotiated in the handshake, if any."""
        self.max_outbox_size = max_outbox_size
        self.close_timeout = close_timeout
        self.rate_limit = rate_limit
        """The limits on the messages received, if any."""
        # Parsed, not yet handled: resumes where it stopped.
        self._events = iter(self.protocol.receive_data(received)) if received else _NO_EVENTS
        # Traffic since take_counts() last took it: plain ints, cheap on the hot path.
        self._received = self._sent = self._sent_bytes = 0
        self._received_bytes = len(received)
        self._unparsed: bytes | memoryview = b""  # read, not yet parsed
        self._parse_size = FIRST_PARSE_SIZE  # how much of it to parse next
        self._turn_end = 0.0  # time.perf_counter() by which the reader lets others run
        self._turn_messages = 0
        self._outbox = _NO_OUTBOX
        self._outbox_bytes = 0
        # The last Pong queued: while it waits in the outbox, it answers later pings too.
        self._queued_pong: bytes | None = None
        self._writer: Greenlet[Any, None] | None = None
        self._flush_pending = False  # waiting for the flusher
        self._flusher = _per_hub("flusher", lambda hub: _Flusher(hub.loop))
        self._reading: Any = None  # the greenlet blocked in recv, if any
        self._parked: Callable[[], None] | None = None  # what serves it once it wakes
        self._in_loop: Callable[[], bool] | None = None  # what tries first, in the loop
        self._owner: greenlet | None = None  # the worker serving it since it woke up
        self._context: contextvars.Context | None = None  # the one serve runs in
        self._workers: Workers | None = None
        self._lost = False
        # How receiving ended, once it has: (code, reason). Not the exception itself: its
        # traceback would reference this connection, and the cycle would leave every
        # closed connection to the garbage collector.
        self._ended: tuple[int, str] | None = None
        self._overflowed = False
        self._tcp_closed = False
        self.close_request: CloseRequest | None = None
        """``(code, reason, error)`` once a local close was requested, else ``None``."""
        self.latency: float | None = None
        """The last keepalive ping's round trip, in seconds."""
        self.on_round_trip: Callable[[float], None] | None = None
        """Called with each keepalive ping's round trip, in seconds (metrics)."""
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        # One loop timer, no greenlet: it alternates between waiting ping_interval to
        # send a ping and ping_timeout for its pong.
        self._timer: Any = None
        self._ping: tuple[bytes, float] | None = None  # payload and time of the ping in flight
        self._pong_callbacks: dict[bytes, Callable[[], None]] | None = None  # see ping()
        if ping_interval is not None:
            self._arm(ping_interval)

    # -- sending -----------------------------------------------------------------------

    def take_counts(self) -> tuple[int, int, int, int]:
        """The traffic since the last call, which starts counting afresh (for metrics).

        Returns:
            ``(messages received, bytes received, messages sent, bytes sent)``: data
            messages, and the bytes of every frame after the handshake, headers included
            (sent: queued for the socket).
        """
        counts = (self._received, self._received_bytes, self._sent, self._sent_bytes)
        self._received = self._received_bytes = self._sent = self._sent_bytes = 0
        return counts

    @property
    def outbox_bytes(self) -> int:
        """How many bytes wait for the client to read them."""
        return self._outbox_bytes

    @property
    def overflowed(self) -> bool:
        """Whether the client read too slowly and was closed for it (see ``max_outbox_size``)."""
        return self._overflowed

    @property
    def can_send(self) -> bool:
        """Whether data frames may still be sent (no Close sent, TCP not lost)."""
        return not (self.protocol.close_sent or self._lost or self._overflowed)

    def send_handshake(self, response: bytes) -> None:
        """Send the handshake's ``101`` response, ahead of every frame.

        It leaves like frames do, in the write that ends this turn of the event loop,
        so a connect handler's first message usually shares its system call.
        """
        self._write(response)
        self._sent_bytes = 0  # it comes first, and is HTTP: frames only are counted

    def send(self, data: str | bytes | bytearray | memoryview) -> bool:
        """Send one message: ``str`` as text, anything bytes-like as binary.

        Any greenlet may send, and any OS thread: from another thread than the event
        loop's, the message is handed to the loop, which is woken to send it at once.

        Returns:
            ``False`` when the connection can no longer carry it (then nothing is sent).

        Raises:
            TypeError: ``data`` is neither ``str`` nor bytes-like.
        """
        if not self._client or _thread_id() != self._flusher.thread:
            return self.send_outgoing(Outgoing(data))
        # A client's frame is its own (masked): nothing to share, no Outgoing to build.
        # (can_send and the outbox check inline: this is the load tool's every message.)
        protocol = self.protocol
        if protocol.close_sent or self._lost or self._overflowed:
            return False
        if type(data) is str:
            frame = protocol.send_text(data)
        elif isinstance(data, (bytes, bytearray, memoryview)):
            frame = protocol.send_binary(data)
        else:
            raise TypeError(
                f"can only send str (text) or bytes-like (binary), not {type(data).__name__}"
            )
        self._sent += 1
        if self._outbox or self._writer is not None or self._lost or not self._direct:
            if len(frame) + self._outbox_bytes > self.max_outbox_size and self._outbox:
                self._overflow(len(frame))
                return False
            self._write(frame)
            return True
        # Nothing waits: straight into the kernel's buffer (what _write and _flush do,
        # without the outbox); what it cannot take waits for the writer.
        self._sent_bytes += len(frame)
        try:
            sent = os.write(self._fd, frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._connection_lost()  # as _flush: the reader finds it lost
            return True
        if sent < len(frame):
            self._write(memoryview(frame)[sent:])
        return True

    def send_outgoing(self, message: Outgoing) -> bool:
        """Send a message prepared once for many connections (see :class:`Outgoing`).

        Returns:
            ``False`` when the connection can no longer carry it (then nothing is sent).
        """
        if not self.can_send:
            return False
        if _thread_id() != self._flusher.thread:
            # Another OS thread (a C library's callback, run_blocking): the connection
            # is the event loop's to touch. (Whether it can carry it, as of now.)
            self._flusher.call_soon(self.send_outgoing, message)
            return True
        # The frame every receiver shares (what protocol.send_data returns on a server, one
        # call less: this runs once per receiver of a broadcast); a client masks its own.
        frame = (
            self.protocol.send_data(message) if self._client else message.frame_for(self.deflate)
        )
        if len(frame) + self._outbox_bytes > self.max_outbox_size and self._outbox:
            self._overflow(len(frame))
            return False
        self._sent += 1
        self._write(frame)
        return True

    def _write(self, data: bytes | memoryview) -> None:
        """Queue bytes; they leave in one write when this turn of the event loop ends.

        Frames sent in a burst (a broadcast round, a handler sending several messages)
        so cost one system call per connection instead of one per frame, and no
        greenlet switch while the kernel buffer has room.
        """
        if self._lost:
            return
        outbox = self._outbox
        if outbox is _NO_OUTBOX:
            outbox = self._outbox = deque()
        outbox.append(data)
        self._outbox_bytes += len(data)
        self._sent_bytes += len(data)
        if self._writer is None and not self._flush_pending:
            if self._direct and self._client:
                # A client sends alone: waiting for the end of the turn would hold a send
                # back in a script that blocks (time.sleep) without the event loop.
                self._flush()
            elif self._direct:
                self._flush_pending = True
                self._flusher.add(self)
            else:
                self._writer = gevent.spawn(self._drain)

    def _answer(self, ping: bytes) -> None:
        """Queue the Pong for a Ping; past :data:`PONG_BACKLOG` bytes waiting, give its
        payload to the Pong still queued instead.

        RFC 6455 section 5.5.3 lets only the most recent ping be answered: a client that
        pings without reading cannot make the outbox grow. One that reads gets a Pong for
        every Ping, as peers (and Autobahn's cases 2.10 and 2.11) expect.
        """
        if not self.can_send:
            return  # our Close is sent: it is the last frame
        frame = self.protocol.send_pong(ping)
        outbox = self._outbox
        # Last in the outbox, the Pong is not being written: unless it is also first,
        # and the writer greenlet is sending it.
        if (
            self._outbox_bytes >= PONG_BACKLOG
            and outbox
            and outbox[-1] is self._queued_pong
            and (len(outbox) > 1 or self._writer is None)
        ):
            self._outbox_bytes += len(frame) - len(outbox[-1])
            outbox[-1] = frame
        else:
            self._write(frame)
        self._queued_pong = frame

    def _flush(self) -> None:
        """Write what is queued in one ``os.write``; leave the rest to the writer greenlet.

        Runs as a loop callback (or directly before closing); never switches greenlets.
        """
        self._flush_pending = False
        outbox = self._outbox
        if self._lost or self._writer is not None or not outbox:
            return
        if len(outbox) == 1:
            data = outbox.popleft()
        else:
            batch, size = [], 0
            while outbox and size < BATCH_SIZE:
                size += len(outbox[0])
                batch.append(outbox.popleft())
            data = b"".join(batch)
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._connection_lost()
            return
        self._outbox_bytes -= sent
        if sent < len(data):
            outbox.appendleft(memoryview(data)[sent:])
        if outbox:
            self._writer = gevent.spawn(self._drain)

    def _drain(self) -> None:
        """The writer greenlet: empties the outbox, then exits."""
        outbox = self._outbox
        try:
            while outbox:
                if len(outbox) > 1 and len(outbox[0]) < BATCH_SIZE:
                    # Join small queued frames so one send carries many.
                    batch = [outbox.popleft()]
                    size = len(batch[0])
                    while outbox and size + len(outbox[0]) <= BATCH_SIZE:
                        size += len(outbox[0])
                        batch.append(outbox.popleft())
                    outbox.appendleft(b"".join(batch))
                chunk = outbox[0]
                sent = self.sock.send(chunk)
                self._outbox_bytes -= sent
                if sent < len(chunk):
                    outbox[0] = memoryview(chunk)[sent:]
                else:
                    outbox.popleft()
        except OSError:
            self._connection_lost()
        finally:
            self._writer = None

    def wait_written(self) -> None:
        """Wait until what is queued is written, if the writer greenlet is still at it.

        A sender that must not outrun its peer calls it after sending, from a greenlet
        (never the event loop): it then waits only while the kernel's buffer is full.
        """
        writer = self._writer
        if writer is not None:
            writer.join()

    def _overflow(self, adding: int) -> None:
        """The client does not read fast enough to take ``adding`` more bytes: drop what
        waits and close with 1008."""
        logger.warning(
            "closing a client that does not read: %d bytes waiting + %d to add exceed "
            "max_outbox_size=%d",
            self._outbox_bytes,
            adding,
            self.max_outbox_size,
        )
        self._overflowed = True
        # The head may be half written: keep it so the stream stays well-formed.
        while len(self._outbox) > 1:
            self._outbox_bytes -= len(self._outbox.pop())
        self.request_close(1008, "outbox overflow: client too slow", error=True)

    def _connection_lost(self) -> None:
        self._lost = True
        self._unparsed = b""
        self._outbox.clear()  # also ends a writer's loop over it
        self._outbox = _NO_OUTBOX
        self._outbox_bytes = 0

    # -- receiving ---------------------------------------------------------------------

    def receive(self) -> str | bytes:
        """Block until the next message and return it (``str`` text, ``bytes`` binary).

        Pings are answered on the way.

        Raises:
            ConnectionClosed: the peer closed (its code), the connection was lost (1006)
                or failed because the peer broke the protocol (the code we sent).
            Interrupted: :meth:`request_close` was called meanwhile (as it is for a
                message over a :attr:`rate_limit` that closes).
        """
        message = self._receive(wait=True)
        assert message is not None
        return message

    def receive_nowait(self) -> str | bytes | None:
        """Like :meth:`receive`, but ``None`` where it would wait for the socket to
        become readable: then :meth:`park` the connection.

        Only a connection that :attr:`can_park` ever returns ``None``; the others wait.
        """
        return self._receive(wait=False)

    def _receive(self, wait: bool) -> str | bytes | None:
        if self._ended is not None:
            raise ConnectionClosed.for_code(*self._ended)  # tell every later caller the same
        while True:
            for event in self._events:
                if type(event) is Message:
                    limit = self.rate_limit
                    if limit is not None and not limit.admit(event.data):
                        if not limit.close:
                            continue  # dropped
                        self.request_close(1008, "rate limit exceeded")
                        raise Interrupted
                    # The turn is checked every TURN_MESSAGES messages: a burst of a few
                    # messages whose handlers fan out (a broadcast) is served in one turn,
                    # so its frames leave in one write per receiver.
                    self._turn_messages += 1
                    self._received += 1
                    if self._turn_messages >= TURN_MESSAGES:
                        self._turn_messages = 0
                        if time.perf_counter() > self._turn_end:
                            self._yield()  # before the handler, which counts in the turn
                    return event.data
                if type(event) is Ping:
                    self._answer(event.payload)
                elif type(event) is Pong:
                    self._pong(event.payload)
                elif type(event) is Close or type(event) is Failure:
                    if type(event) is Failure:
                        self._log_parser_bug()
                        self._fail(event.code, event.reason)
                    self._ended = (event.code, event.reason)
                    raise ConnectionClosed.for_code(event.code, event.reason)
            if self.close_request is not None:
                raise Interrupted
            if not wait and self._drained and self._buffer is not None and not self._unparsed:
                return None
            self._events = iter(self._read_events())

    @property
    def can_park(self) -> bool:
        """Whether this connection can :meth:`park` (a plain gevent socket, read directly)."""
        return self._buffer is not None

    def park(
        self,
        serve: Callable[[], None],
        context: contextvars.Context | None = None,
        *,
        in_loop: Callable[[], bool] | None = None,
    ) -> None:
        """Let the owning greenlet go while there is nothing to read.

        The event loop watches the socket instead; once it is readable or a close is
        requested, a worker greenlet (:attr:`owner`) runs ``serve`` in ``context``;
        ``serve`` reads on with :meth:`receive_nowait` and may park again. Call it when
        :meth:`receive_nowait` returned ``None``, then return.

        Args:
            serve: what serves the connection once it wakes.
            context: the context ``serve`` runs in (None: a fresh one).
            in_loop: tried first when the socket is readable, in the event loop itself
                (no greenlet switch): it reads with :meth:`messages_nowait` and returns
                whether it handled everything; if not, ``serve`` runs for the rest.
        """
        self._parked = serve
        self._context = context
        self._in_loop = in_loop
        if self._workers is None:
            self._workers = workers()
        self._watcher.start(self._wake)
        if self.close_request is not None:  # requested while the owner was busy
            gevent.get_hub().loop.run_callback(self._wake)

    @property
    def owner(self) -> greenlet | None:
        """The greenlet serving this connection since it last woke from :meth:`park`."""
        return self._owner

    def _wake(self) -> None:
        """In the hub: the socket is readable, or a close was requested, while parked."""
        if self._parked is not None:
            in_loop = self._in_loop
            if in_loop is None or self.close_request is not None:
                self._drained = False  # or a closing handshake is next: reading waits anyway
            elif in_loop():
                return  # handled in the loop: still parked
            # (else in_loop read, and what is left to handle waits in _events)
            self._watcher.stop()
            self._turn_end = time.perf_counter() + TURN
            self._workers.run(self._serve_woken, self._context)  # type: ignore[union-attr]

    def messages_nowait(self) -> list[Message] | None:
        """Read once without waiting, in the event loop, for a parked connection's ``in_loop``.

        Returns:
            The messages that came, if nothing else did (no message when the socket had
            nothing after all); else None: pings, a Close, a failure or the end of the
            stream came too, and everything read waits, in order, for the ``serve`` of
            :meth:`park`, which handles it with :meth:`receive_nowait`.
        """
        buffer = self._buffer
        assert buffer is not None and self._parked is not None  # see park()
        try:
            # os.readv on the descriptor: a gevent socket would wait, and the loop cannot.
            data = bytes(buffer[: os.readv(self._fd, (buffer,))])
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        self._received_bytes += len(data)
        if len(data) > self._parse_size:
            self._unparsed = data  # a flood: parsed in turns by serve (see _read_events)
            return None
        if data:
            events = self.protocol.receive_data(data)
            for event in events:
                if type(event) is not Message:
                    break
            else:
                self._received += len(events)
                return events  # type: ignore[return-value]  # (all messages)
        else:
            self._connection_lost()
            events = self.protocol.receive_eof()
        self._events = iter(events)
        return None

    def _serve_woken(self) -> None:
        """On a worker: serve the connection woken from :meth:`park`."""
        serve, self._parked = self._parked, None
        self._owner = me = getcurrent()
        try:
            if serve is not None:
                serve()
        finally:
            if self._owner is me:
                self._owner = None

    def _read_events(self) -> list[Event]:
        """Parse the next part of what was read, reading once (interruptibly) if need be.

        Lets the other greenlets run first when this turn is over and the data keeps
        coming; a read after one that emptied the kernel buffer waits anyway.
        """
        unparsed = self._unparsed
        if (unparsed or not self._drained) and time.perf_counter() > self._turn_end:
            self._yield()
        if not unparsed:
            waited = self._drained
            unparsed = self._read()
            if not unparsed:
                self._connection_lost()
                return self.protocol.receive_eof()
            if waited:
                self._turn_end = time.perf_counter() + TURN
        size = self._parse_size
        if len(unparsed) < size:
            self._unparsed = b""
            return self.protocol.receive_data(unparsed)
        # Parse a part sized to take about a quarter of a turn: tiny frames cost
        # microseconds each, and a whole read of them would keep the loop for tens of
        # milliseconds, while big frames are parsed a whole read at a time.
        self._unparsed = memoryview(unparsed)[size:]
        started = time.perf_counter()
        events = self.protocol.receive_data(unparsed[:size])
        spent = time.perf_counter() - started
        fitting = int(size * TURN / 4 / spent) if spent > 0 else READ_SIZE
        self._parse_size = min(READ_SIZE, max(MIN_PARSE_SIZE, fitting))
        return events

    def _yield(self) -> None:
        """Let every other ready greenlet run, including those waiting for their sockets.

        ``gevent.sleep(0)`` would not do: the loop may run such callbacks again and again
        before it polls for I/O. A timer due at once fires after the next poll.
        """
        hub = gevent.get_hub()
        timer = hub.loop.timer(0)
        try:
            hub.wait(timer)
        finally:
            timer.close()
        self._turn_end = time.perf_counter() + TURN

    def _read(self) -> bytes:
        """Read once from the socket (interruptible); empty at EOF or on error."""
        self._reading = gevent.getcurrent()
        try:
            buffer = self._buffer
            if buffer is None:
                data = self._recv(READ_SIZE)
            else:
                sock: Any = self.sock
                if self._drained:
                    wait_readable(sock, self._watcher)
                # recv(READ_SIZE) would allocate, and fault in, READ_SIZE for every
                # read, small ones too. Read into the hub's buffer and copy out what
                # came (nothing switches greenlets in between).
                data = bytes(buffer[: sock.recv_into(buffer)])
        except OSError:
            data = b""
        finally:
            self._reading = None
        self._received_bytes += len(data)
        self._drained = len(data) < READ_SIZE
        return data

    @property
    def ended(self) -> tuple[int, str] | None:
        """How receiving ended, ``(code, reason)``: the peer's Close (1005 without a code),
        the code we failed the connection with, or 1006 for a lost one; None until then."""
        return self._ended

    @property
    def echo_code(self) -> int | None:
        """The code to answer the peer's Close with: its own, or none if it sent none."""
        ended = self._ended
        return None if ended is None or ended[0] in (1005, 1006) else ended[0]

    def receive_or_closed(self, timeout: float | None = None) -> str | bytes:
        """Like :meth:`receive`, for application code: it never sees :class:`Interrupted`.

        Raises:
            ConnectionClosed: as :meth:`receive`, and also for a requested close.
            TimeoutError: no message within ``timeout`` seconds (``None``: no limit).
        """
        try:
            with _bounded(timeout, TimeoutError(f"no message within {timeout} s")):
                return self.receive()
        except Interrupted:
            request = self.close_request or CloseRequest(1000, "", False)
            raise ConnectionClosed.for_code(request.code, request.reason) from None

    # -- keepalive ---------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        loop = gevent.get_hub().loop
        self._timer = loop.timer(seconds)
        self._timer.start(self._keepalive)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None

    def _keepalive(self) -> None:
        """Timer callback, in the hub: send a ping, or give up on the one in flight."""
        self._timer = None
        if not self.can_send or self.close_request is not None:
            return
        if self._ping is None:
            payload = os.urandom(4)
            self._ping = (payload, gevent.get_hub().loop.now())
            self._write(self.protocol.send_ping(payload))
            self._arm(self.ping_timeout)
        elif self._reading is None and self._parked is None:
            # The owner is busy in a handler and cannot read the pong: check again later
            # rather than blame the client for a slow handler.
            self._arm(self.ping_timeout)
        else:
            logger.info("closing a client that did not answer a ping within %ss", self.ping_timeout)
            self.request_close(1011, "keepalive ping timeout", error=True)

    def ping(self, payload: bytes, on_pong: Callable[[], None]) -> bool:
        """Send a Ping; ``on_pong()`` runs in the reading greenlet once its Pong comes.

        Args:
            payload: the ping's payload, at most 125 bytes, not already waiting for its Pong.
            on_pong: called once, when a Pong with the same payload is received.

        Returns:
            ``False`` when the connection can no longer carry it (then nothing is sent).

        Raises:
            ValueError: ``payload`` is longer than 125 bytes.
        """
        if not self.can_send:
            return False
        frame = self.protocol.send_ping(payload)
        if self._pong_callbacks is None:
            self._pong_callbacks = {}
        self._pong_callbacks[payload] = on_pong
        self._write(frame)
        return True

    def _pong(self, payload: bytes) -> None:
        """A pong came: if it answers our ping, note the round trip and rearm."""
        callbacks = self._pong_callbacks
        if callbacks:
            on_pong = callbacks.pop(payload, None)
            if on_pong is not None:
                on_pong()
        if self._ping is None or payload != self._ping[0]:
            return  # unsolicited, or an answer to a ping we gave up on
        self.latency = gevent.get_hub().loop.now() - self._ping[1]
        if self.on_round_trip is not None:
            self.on_round_trip(self.latency)
        self._ping = None
        self._disarm()
        if self.ping_interval is not None:
            self._arm(self.ping_interval)

    # -- closing -----------------------------------------------------------------------

    def request_close(self, code: int, reason: str = "", *, error: bool = False) -> None:
        """Ask the owning greenlet to close the connection, from any greenlet or thread.

        The first request wins. If the owner is waiting for data (or the connection is
        parked) it is interrupted at once; if it is busy (running a handler) it closes
        when that returns.

        Raises:
            ValueError: ``code`` may not be sent in a Close frame (e.g. 1005, 1006).
        """
        if code not in EXTERNAL_CLOSE_CODES:
            raise ValueError(
                f"close code {code} may not be sent: use 1000-1003, 1007-1014 or 3000-4999"
            )
        if _thread_id() != self._flusher.thread:
            self._flusher.call_soon(partial(self.request_close, code, reason, error=error))
            return
        if self.close_request is not None:
            return
        self.close_request = CloseRequest(code, reason, error)
        if self._reading is not None:
            gevent.get_hub().loop.run_callback(self._interrupt)
        elif self._parked is not None:
            gevent.get_hub().loop.run_callback(self._wake)

    def _interrupt(self) -> None:
        # Runs in the hub: throw only if the owner is still parked in recv, never
        # into application code.
        reader = self._reading
        if reader is not None:
            reader.throw(Interrupted)

    def close(self, code: int | None = 1000, reason: str = "") -> None:
        """Run the closing handshake and close TCP, bounded by ``close_timeout``.

        Sends our Close (unless sent already), waits for the peer's (unless received
        already), then closes the socket. Call it from the owning greenlet.
        """
        if self._tcp_closed:
            return
        if self.close_request is None:
            # Later requests must not interrupt the handshake below.
            self.close_request = CloseRequest(1000 if code is None else code, reason, False)
        deadline = _Deadline(self.close_timeout)
        if not self.protocol.close_sent and not self._lost:
            self._write(self.protocol.send_close(code, reason))
        try:
            if not (self.protocol.close_received or self._lost):
                with _bounded(deadline.remaining()):
                    failed = False
                    while not (self.protocol.close_received or self._lost or failed):
                        for event in self._read_events():
                            if type(event) is Failure:
                                failed = True
                            elif type(event) is Close and self._ended is None:
                                self._ended = (event.code, event.reason)  # the peer's answer
        finally:
            self._close_tcp(deadline)

    def _log_parser_bug(self) -> None:
        """Log what made the protocol fail when it was not the peer's fault but a bug."""
        exc = self.protocol.parser_exc
        if exc is not None and not isinstance(exc, WebSocketError):
            logger.error("the WebSocket protocol failed on what the peer sent", exc_info=exc)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection: send Close with ``code`` and close TCP without waiting."""
        deadline = _Deadline(self.close_timeout)
        if not self.protocol.close_sent and not self._lost:
            self._write(self.protocol.send_close(code, reason))
        self._close_tcp(deadline, drain_input=True)

    def _close_tcp(self, deadline: _Deadline, *, drain_input: bool = False) -> None:
        """Flush what is queued, half-close, and close the socket (idempotent)."""
        if self._tcp_closed:
            return
        self._tcp_closed = True
        self._disarm()
        if self._outbox and self._writer is None:
            self._flush()  # now, rather than in a callback after the socket is gone
        writer = self._writer
        if writer is not None and not self._lost:
            writer.join(deadline.remaining())
            if self._writer is not None:
                writer.kill(block=False)
                self._connection_lost()
        try:
            if not self._lost:
                self.sock.shutdown(socket.SHUT_WR)
                if drain_input:
                    # Reading to EOF keeps the kernel from answering with RST, which
                    # could destroy our Close frame before the peer reads it.
                    with _bounded(deadline.remaining()):
                        while self._recv(READ_SIZE):
                            pass
        except OSError:
            pass
        finally:
            self._connection_lost()
            self.sock.close()

    def abort(self) -> None:
        """Close the socket now, without any handshake."""
        self._tcp_closed = True
        self._disarm()
        if self._parked is not None:
            self._parked = None
            self._watcher.stop()
        if self._writer is not None:
            self._writer.kill(block=False)
        self._connection_lost()
        self.sock.close()


def fresh_clock() -> float:
    """The event loop's time, brought up to date first; timers start from it.

    The loop updates its clock only as it turns: in a script that is not monkey-patched
    a ``time.sleep`` leaves it behind, and a timer started from it would expire early.
    """
    loop = gevent.get_hub().loop
    loop.update_now()
    now: float = loop.now()
    return now


@contextmanager
def _bounded(seconds: float | None, error: Exception | None = None) -> Iterator[None]:
    """Run the block for at most ``seconds``; then raise ``error``, or just stop if None.

    gevent's own Timeout does the waiting: the socket layer takes any OSError, the
    builtin TimeoutError included, for a lost connection.
    """
    fresh_clock()
    timeout = gevent.Timeout(seconds)
    timeout.start()
    try:
        yield
    except gevent.Timeout as expired:
        if expired is not timeout:
            raise
        if error is not None:
            raise error from None
    finally:
        timeout.close()


class _Deadline:
    """A point in time a sequence of bounded waits must all finish by."""

    def __init__(self, timeout: float) -> None:
        self._end = fresh_clock() + timeout

    def remaining(self) -> float:
        return max(0.0, self._end - gevent.get_hub().loop.now())
