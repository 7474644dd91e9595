"""One connection's I/O (geo_ws.io.connection) over a real socket pair.

The connection core serves both sides: the protocol behaviours (pings, limits, the
closing handshake...) are tested once, parametrized over a server's and a client's
connection, each against a peer of the other side.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterator

import gevent
import pytest
from gevent.event import AsyncResult
from gevent.monkey import get_original

from geo_ws.exceptions import ConnectionClosed
from geo_ws.io.connection import BATCH_SIZE, Connection, Interrupted
from geo_ws.protocol.frames import Opcode, encode_close, encode_frame
from geo_ws.protocol.machine import Close, Event, Message, Ping, Pong, Protocol
from geo_ws.protocol.outgoing import Outgoing

from ..helpers import MASK, WAIT


class Peer:
    """The other end of the pair: sends frames as its side does, parses what it receives.

    Args:
        sock: its end of the socket pair.
        client: whether it plays the client (it masks its frames) or the server.
    """

    def __init__(self, sock: socket.socket, *, client: bool = True) -> None:
        self.sock = sock
        self.client = client
        self.protocol = Protocol(client=client, max_message_size=None)
        self.events: list[Event] = []

    def send(self, opcode: int, payload: bytes = b"", *, wrong_mask: bool = False) -> None:
        """Send one frame; ``wrong_mask`` breaks RFC 6455 section 5.1 (masked iff client)."""
        masked = self.client is not wrong_mask
        self.sock.sendall(encode_frame(opcode, payload, mask=os.urandom(4) if masked else None))

    def event(self) -> Event:
        with gevent.Timeout(WAIT):
            while not self.events:
                data = self.sock.recv(65536)
                self.events += (
                    self.protocol.receive_data(data) if data else self.protocol.receive_eof()
                )
        return self.events.pop(0)

    def at_eof(self) -> bool:
        """Read and drop what is left; True once the server closed TCP."""
        with gevent.Timeout(WAIT):
            while self.sock.recv(65536):
                pass
        return True


def make_pair(side: str, **options: object) -> tuple[Connection, Peer]:
    """A connection of ``side`` ("server" or "client") and its peer, the other side."""
    ours, theirs = socket.socketpair()
    client = side == "client"
    connection = Connection(ours, close_timeout=1, client=client, **options)  # type: ignore[arg-type]
    return connection, Peer(theirs, client=not client)


@pytest.fixture(params=["server", "client"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Connection, Peer]]:
    """A connection of either side and its peer; tests using it run for both."""
    connection, peer = make_pair(request.param)
    yield connection, peer
    connection.abort()
    peer.sock.close()


@pytest.fixture
def server_pair() -> Iterator[tuple[Connection, Peer]]:
    connection, peer = make_pair("server")
    yield connection, peer
    connection.abort()
    peer.sock.close()


def test_a_burst_of_sends_leaves_in_one_write_at_the_end_of_the_turn(
    server_pair: tuple[Connection, Peer],
) -> None:
    connection, peer = server_pair
    for word in ("one", "two", "three"):
        assert connection.send(word)
    peer.sock.settimeout(0.0)
    with pytest.raises(BlockingIOError):
        peer.sock.recv(100)  # nothing written while the sender keeps the turn
    gevent.sleep(0)  # the turn ends: one write carries the whole burst
    expected = b"".join(Outgoing(word).frame for word in ("one", "two", "three"))
    assert peer.sock.recv(100) == expected


def test_what_the_kernel_cannot_take_waits_in_order(pair: tuple[Connection, Peer]) -> None:
    connection, peer = pair
    messages = [bytes([n]) * 300_000 for n in range(8)]  # far more than socket buffers
    for message in messages:
        assert connection.send(message)
    assert [peer.event() for _ in messages] == [Message(message) for message in messages]


def test_overflowing_the_outbox_requests_a_1008_close(
    pair: tuple[Connection, Peer], caplog: pytest.LogCaptureFixture
) -> None:
    connection, peer = pair
    connection.max_outbox_size = 500_000
    sent = [connection.send(b"x" * 300_000) for _ in range(5)]
    assert sent[0] and not sent[-1]
    assert connection.close_request is not None
    assert connection.close_request[0] == 1008
    assert not connection.can_send
    assert not connection.send("refused after the overflow")
    # What waited, and what would have been added: together over the limit.
    (warning,) = caplog.messages
    waiting, adding, limit = map(int, re.findall(r"\d+", warning))
    frame = len(Outgoing(b"x" * 300_000).frame) + (0 if peer.client else 4)  # a client's mask
    assert waiting < limit < waiting + adding and adding == frame
    assert warning.endswith(
        f"{waiting} bytes waiting + {adding} to add exceed max_outbox_size={limit}"
    )


def test_a_send_from_another_os_thread_leaves_at_once(pair: tuple[Connection, Peer]) -> None:
    connection, peer = pair
    # A real thread (a C library's callback thread, say), which goes on running.
    start_thread = get_original("_thread", "start_new_thread")
    finished = get_original("_thread", "allocate_lock")()
    finished.acquire()
    sent: list[bool] = []

    def native() -> None:
        sent.append(connection.send("from a thread"))
        connection.request_close(4000, "from a thread too")
        finished.acquire(timeout=WAIT)

    started = time.perf_counter()
    start_thread(native, ())
    try:
        # Before, it left when something else woke the loop: here peer.event's timeout.
        assert peer.event() == Message("from a thread")
        assert time.perf_counter() - started < 1
        assert sent == [True]
        with gevent.Timeout(1):
            while connection.close_request is None:
                gevent.sleep(0.01)
        assert connection.close_request == (4000, "from a thread too", False)
    finally:
        finished.release()


def test_a_client_writes_each_send_at_once_masked() -> None:
    connection, peer = make_pair("client")
    try:
        assert connection.send("one")
        peer.sock.settimeout(0.0)
        first = peer.sock.recv(100)  # written before this greenlet gave up its turn
        assert first[:2] == b"\x81\x83" and len(first) == 2 + 4 + 3
        assert connection.send("one")
        assert peer.sock.recv(100)[2:6] != first[2:6]  # a fresh mask for every frame
    finally:
        connection.abort()
        peer.sock.close()


def test_send_rejects_other_types(pair: tuple[Connection, Peer]) -> None:
    connection, _ = pair
    with pytest.raises(TypeError, match="int"):
        connection.send(42)  # type: ignore[arg-type]


def test_receive_answers_pings_and_returns_messages(pair: tuple[Connection, Peer]) -> None:
    connection, peer = pair
    peer.send(Opcode.PING, b"payload")
    peer.send(Opcode.TEXT, "héllo".encode())
    peer.send(Opcode.BINARY, b"\x00\xff")
    assert connection.receive() == "héllo"
    assert connection.receive() == b"\x00\xff"
    assert peer.event() == Pong(b"payload")


def test_pings_from_a_client_that_does_not_read_get_one_pong_queued(
    server_pair: tuple[Connection, Peer],
) -> None:
    connection, peer = server_pair
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 2**20)
    pings = [encode_frame(Opcode.PING, b"%d" % n, mask=MASK) for n in range(300_000)]
    peer.sock.sendall(b"".join(pings) + encode_frame(Opcode.TEXT, b"the end", mask=MASK))
    with gevent.Timeout(30):
        assert connection.receive() == "the end"
    # What the kernel could not take: at most one batch being written, and one Pong.
    # Before, a Pong for every ping: megabytes, without limit.
    assert connection._outbox_bytes < BATCH_SIZE + 200, connection._outbox_bytes
    pongs = []
    while not pongs or pongs[-1] != Pong(b"299999"):
        pongs.append(peer.event())
    assert all(type(pong) is Pong for pong in pongs)  # the last ping answered, last


def test_a_burst_of_pings_from_a_client_that_reads_gets_every_pong(
    pair: tuple[Connection, Peer],
) -> None:
    """Coalescing is for peers that do not read (Autobahn 2.10: ten pings, ten pongs)."""
    connection, peer = pair
    mask = MASK if peer.client else None
    pings = [encode_frame(Opcode.PING, b"payload-%d" % n, mask=mask) for n in range(10)]
    peer.sock.sendall(b"".join(pings) + encode_frame(Opcode.TEXT, b"the end", mask=mask))
    assert connection.receive() == "the end"
    assert [peer.event() for _ in range(10)] == [Pong(b"payload-%d" % n) for n in range(10)]


def test_receive_raises_connection_closed_with_the_peer_code(pair: tuple[Connection, Peer]) -> None:
    connection, peer = pair
    peer.send(Opcode.CLOSE, encode_close(4000, "done"))
    with pytest.raises(ConnectionClosed) as closed:
        connection.receive()
    assert (closed.value.code, closed.value.reason) == (4000, "done")
    assert connection.can_send  # the app may still answer before the closing Close
    connection.close(4000)
    assert peer.event() == Close(4000, "")
    assert peer.at_eof()  # then TCP closes


def test_a_bug_in_the_parser_is_logged_and_closes_with_1011(
    pair: tuple[Connection, Peer], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The peer is told nothing but "internal error"; the log gets the traceback."""
    connection, peer = pair

    parse = Protocol._parse

    def broken(self: Protocol, data: bytes, events: list[Event]) -> None:
        if self is connection.protocol:
            raise RuntimeError("a bug in the parser")
        parse(self, data, events)  # the peer's

    monkeypatch.setattr(Protocol, "_parse", broken)
    peer.send(Opcode.TEXT, b"hello")
    with caplog.at_level(logging.ERROR, logger="geo_ws"), pytest.raises(ConnectionClosed) as closed:
        connection.receive()
    assert closed.value.code == 1011
    assert "a bug in the parser" in caplog.text and "Traceback" in caplog.text
    assert peer.event() == Close(1011, "internal error")


def test_a_dropped_connection_is_1006(pair: tuple[Connection, Peer]) -> None:
    connection, peer = pair
    peer.sock.close()
    with pytest.raises(ConnectionClosed) as closed:
        connection.receive()
    assert closed.value.code == 1006
    assert not connection.can_send


def test_a_protocol_error_fails_with_its_code_and_closes_tcp(pair: tuple[Connection, Peer]) -> None:
    connection, peer = pair
    peer.send(Opcode.TEXT, b"fine")
    peer.send(Opcode.TEXT, b"masked as the other side would", wrong_mask=True)
    assert connection.receive() == "fine"  # events before the bad frame come first
    with pytest.raises(ConnectionClosed) as closed:
        connection.receive()
    assert closed.value.code == 1002
    close = peer.event()
    assert isinstance(close, Close) and close.code == 1002
    peer.sock.shutdown(socket.SHUT_WR)
    assert peer.at_eof()


def test_request_close_interrupts_a_waiting_receive(pair: tuple[Connection, Peer]) -> None:
    connection, _ = pair
    waiter = gevent.spawn(connection.receive)
    gevent.sleep(0.01)
    connection.request_close(1001, "going away")
    with pytest.raises(Interrupted):
        waiter.get(timeout=WAIT)
    connection.request_close(1000)  # the first request wins
    assert connection.close_request == (1001, "going away", False)


def test_close_waits_for_the_peer_close_then_closes_tcp(pair: tuple[Connection, Peer]) -> None:
    connection, peer = pair
    closing = gevent.spawn(connection.close, 1000, "bye")
    assert peer.event() == Close(1000, "bye")
    assert not closing.ready()  # still waiting for our answer
    peer.send(Opcode.CLOSE, encode_close(1000))
    closing.get(timeout=WAIT)
    assert peer.at_eof()


def test_close_gives_up_on_a_silent_peer_after_close_timeout(pair: tuple[Connection, Peer]) -> None:
    connection, peer = pair
    connection.close_timeout = 0.2
    with gevent.Timeout(WAIT):
        connection.close(1000)
    assert peer.event() == Close(1000, "")
    assert peer.at_eof()


def test_pings_during_a_closing_handshake_are_not_answered(pair: tuple[Connection, Peer]) -> None:
    connection, peer = pair
    closing = gevent.spawn(connection.close, 1000)
    assert peer.event() == Close(1000, "")
    peer.send(Opcode.PING, b"late")
    peer.send(Opcode.CLOSE, encode_close(1000))
    closing.get(timeout=WAIT)
    assert peer.sock.recv(100) == b""  # EOF, no Pong


def test_a_parked_connection_is_served_by_a_worker_once_data_comes(
    pair: tuple[Connection, Peer],
) -> None:
    connection, peer = pair
    assert connection.can_park
    assert connection.receive_nowait() is None  # nothing came yet: park rather than wait
    served: AsyncResult[tuple[str | bytes | None, object]] = AsyncResult()

    def serve() -> None:
        served.set((connection.receive_nowait(), gevent.getcurrent()))

    connection.park(serve)
    peer.send(Opcode.TEXT, b"hi")
    message, worker = served.get(timeout=WAIT)
    assert message == "hi"
    assert worker is not gevent.getcurrent()
    assert connection.owner is None  # serve returned: nothing holds the connection


def test_request_close_wakes_a_parked_connection(pair: tuple[Connection, Peer]) -> None:
    connection, _ = pair
    assert connection.receive_nowait() is None
    interrupted = AsyncResult()

    def serve() -> None:
        try:
            connection.receive_nowait()
        except Interrupted:
            interrupted.set(True)

    connection.park(serve)
    connection.request_close(1001, "going away")
    assert interrupted.get(timeout=WAIT)


def opened(opcode: int, frame: bytes) -> bytes:
    """``frame`` repeated into about 3 MB, inside a message begun with ``opcode``."""
    count = 3 * 2**20 // len(frame)
    if opcode == Opcode.CONT:  # fragments: of one message, begun here and ended after
        begin = encode_frame(Opcode.TEXT, b"", fin=False, mask=MASK)
        return begin + frame * count + encode_frame(Opcode.CONT, b"", mask=MASK)
    return frame * count


FLOODS = {
    "tiny messages": opened(Opcode.TEXT, encode_frame(Opcode.TEXT, b"x", mask=MASK)),
    "pings": opened(Opcode.PING, encode_frame(Opcode.PING, b"p", mask=MASK)),
    "empty fragments": opened(Opcode.CONT, encode_frame(Opcode.CONT, b"", fin=False, mask=MASK)),
    "one-byte fragments": opened(
        Opcode.CONT, encode_frame(Opcode.CONT, b"x", fin=False, mask=MASK)
    ),
}


@pytest.mark.parametrize("flood", FLOODS.values(), ids=FLOODS.keys())
def test_a_flood_of_small_frames_lets_other_greenlets_run(
    server_pair: tuple[Connection, Peer], flood: bytes
) -> None:
    connection, peer = server_pair
    # Room for the whole flood in the socket: every read then fills the reader's buffer.
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 2**20)
    peer.sock.sendall(flood + encode_frame(Opcode.TEXT, b"the end", mask=MASK))
    ticks = [time.perf_counter()]

    def tick() -> None:
        while True:
            gevent.sleep(0.001)
            ticks.append(time.perf_counter())

    ticker = gevent.spawn(tick)
    with gevent.Timeout(30):
        while connection.receive() != "the end":
            pass
    ticks.append(time.perf_counter())
    ticker.kill()
    # Without turns, the reader kept the loop for the whole flood (hundreds of ms).
    longest = max(later - earlier for earlier, later in zip(ticks, ticks[1:], strict=False))
    assert longest < 0.1, longest


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize(
    ("payload", "code"),
    [(b"x" * 11, 1009), (b"caf\xc3", 1007), (b"\xed\xa0\x80", 1007)],
    ids=["too-big", "truncated-utf8", "surrogate"],
)
def test_a_message_over_the_limit_or_invalid_text_fails_the_connection(
    side: str, payload: bytes, code: int
) -> None:
    connection, peer = make_pair(side, max_message_size=10)
    try:
        peer.send(Opcode.TEXT, b"0123456789")  # at the limit: fine
        peer.send(Opcode.TEXT, payload)
        assert connection.receive() == "0123456789"
        with pytest.raises(ConnectionClosed) as closed:
            connection.receive()
        assert closed.value.code == code
        close = peer.event()
        assert isinstance(close, Close) and close.code == code
        assert not connection.can_send
    finally:
        connection.abort()
        peer.sock.close()


def test_ping_calls_back_when_its_pong_comes(pair: tuple[Connection, Peer]) -> None:
    connection, peer = pair
    ponged: list[bytes] = []
    assert connection.ping(b"one", lambda: ponged.append(b"one"))
    assert connection.ping(b"two", lambda: ponged.append(b"two"))
    assert (peer.event(), peer.event()) == (Ping(b"one"), Ping(b"two"))
    peer.send(Opcode.PONG, b"two")
    peer.send(Opcode.PONG, b"unsolicited")
    peer.send(Opcode.TEXT, b"then a message")
    assert connection.receive() == "then a message"
    assert ponged == [b"two"]


def test_close_records_the_peer_answer(pair: tuple[Connection, Peer]) -> None:
    connection, peer = pair
    closing = gevent.spawn(connection.close, 4000, "done")
    assert peer.event() == Close(4000, "done")
    peer.send(Opcode.CLOSE, encode_close(4001, "agreed"))
    closing.get(timeout=WAIT)
    assert connection.ended == (4001, "agreed")
    with pytest.raises(ConnectionClosed) as closed:
        connection.receive()
    assert closed.value.code == 4001


def test_bytes_received_with_the_handshake_are_read_first() -> None:
    ours, theirs = socket.socketpair()
    connection = Connection(ours, client=True, received=encode_frame(Opcode.TEXT, b"early"))
    try:
        theirs.sendall(encode_frame(Opcode.TEXT, b"later"))
        assert (connection.receive(), connection.receive()) == ("early", "later")
    finally:
        connection.abort()
        theirs.close()
