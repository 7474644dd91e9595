"""Slow and greedy clients against a server subprocess: nobody else may suffer."""

from __future__ import annotations

import base64
import os
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import gevent
import pytest
from gevent.pool import Pool

from geo_ws.protocol.frames import Opcode, encode_frame
from geo_ws.protocol.machine import Message, Protocol

from .helpers import MASK, WAIT, RawClient
from .live_apps.process import ServerProcess
from .server.test_gunicorn import gunicorn

RECEIVERS = 1000
#: A million deliveries by default, about 10 s here; GEO_WS_STRESS_MESSAGES=10000 runs
#: the full ten million (a minute or more of CPU on a 2-core machine).
MESSAGES = int(os.environ.get("GEO_WS_STRESS_MESSAGES", "1000"))
#: The size of each broadcast.
PAYLOAD = 50


def handshake(port: int, path: str, receive_buffer: int = 0) -> socket.socket:
    """Open a WebSocket with a bare socket; return it once the 101 is read."""
    sock = socket.socket()
    if receive_buffer:  # before connecting, so that the TCP window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, "closed during the handshake"
        head += byte
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def message(number: int) -> bytes:
    """The payload of broadcast number ``number``."""
    return b"%08d" % number + b"." * (PAYLOAD - 8)


def open_many(port: int, path: str, count: int) -> list[socket.socket]:
    pool = Pool(100)  # at most 100 handshakes in flight
    return list(pool.imap(lambda _: handshake(port, path), range(count)))


def rss_kib(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/rss", timeout=WAIT) as response:
        return int(response.read())


@pytest.mark.timeout(180)
def test_a_stuck_client_is_closed_and_everyone_else_gets_every_broadcast() -> None:
    with ServerProcess(
        "-m", "geo_ws", "run", "tests.live_apps.stress:app", "--port", "0"
    ) as server:
        _, port = server.wait_serving()
        receivers = open_many(port, "/room", RECEIVERS)
        stuck = handshake(port, "/room", receive_buffer=4096)  # and never reads
        sender = handshake(port, "/room")
        before = rss_kib(port)
        frame_size = len(encode_frame(Opcode.TEXT, message(0)))
        expected = frame_size * MESSAGES

        def count(sock: socket.socket) -> int:
            """Bytes received until all the broadcasts are in (each frame has one size)."""
            buffer, total = bytearray(65536), 0
            while total < expected:
                received = sock.recv_into(buffer)
                assert received, f"closed after {total} of {expected} bytes"
                total += received
            return total

        def check_order(sock: socket.socket) -> list[str]:
            """Every broadcast, parsed, in the sender's order."""
            protocol, messages = Protocol(client=True, max_message_size=None), []
            while len(messages) < MESSAGES:
                data = sock.recv(65536)
                assert data
                messages += [event.data for event in protocol.receive_data(data)]
            return messages

        readers = [gevent.spawn(check_order, receivers[0])]
        readers += [gevent.spawn(count, sock) for sock in receivers[1:]]
        readers.append(gevent.spawn(check_order, sender))
        started = time.monotonic()
        batch = b"".join(
            encode_frame(Opcode.TEXT, message(n), mask=os.urandom(4)) for n in range(MESSAGES)
        )
        sender.sendall(batch)
        # It asks for more than kernel buffers and its outbox hold, and reads nothing.
        stuck.sendall(encode_frame(Opcode.TEXT, b"flood me", mask=os.urandom(4)))
        gevent.joinall(readers, timeout=120, raise_error=True)
        elapsed = time.monotonic() - started
        assert all(reader.successful() for reader in readers), "a receiver did not get everything"
        in_order = [message(n).decode() for n in range(MESSAGES)]
        assert readers[0].value == in_order and readers[-1].value == in_order
        assert all(reader.value == expected for reader in readers[1:-1])
        # The stuck client overflowed its outbox and was closed with 1008, in the log.
        server.stderr.wait_for(re.compile("does not read"), WAIT)
        # Memory stays bounded: the stuck client's backlog was dropped, not kept.
        assert rss_kib(port) - before < 100 * 1024, (before, rss_kib(port))
        print(f"{RECEIVERS} receivers x {MESSAGES} broadcasts in {elapsed:.1f}s")
        for sock in [*receivers, stuck, sender]:
            sock.close()


def test_5000_idle_connections_and_100_half_open_handshakes_do_not_stall_a_client() -> None:
    with ServerProcess(
        "-m", "geo_ws", "run", "tests.live_apps.stress:app", "--port", "0"
    ) as server:
        _, port = server.wait_serving()
        idle = open_many(port, "/echo", 5000)
        half_open = []
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")  # and stop
            half_open.append(sock)
        client = RawClient(f"127.0.0.1:{port}", "/echo")
        worst = 0.0
        for n in range(20):
            started = time.monotonic()
            client.send_text(f"echo {n}")
            assert client.recv_event() == Message(f"echo {n}")
            worst = max(worst, time.monotonic() - started)
        assert worst < 1.0, worst
        for sock in [*idle, *half_open]:
            sock.close()


@contextmanager
def stress_server(kind: str) -> Iterator[tuple[ServerProcess, int]]:
    """The stress app on the built-in server or under gunicorn's geo_ws worker, whose
    arbiter kills a worker that blocks its event loop for 10 s."""
    if kind == "builtin":
        with ServerProcess(
            "-m", "geo_ws", "run", "tests.live_apps.stress:app", "--port", "0"
        ) as server:
            yield server, server.wait_serving()[1]
    else:
        app = "tests.live_apps.stress:app"
        with gunicorn(app, "--timeout", "10") as (server, address):
            yield server, int(address.rsplit(":", 1)[1])


#: One round of a flood of small legal frames that ask for nothing back but Pongs: tiny
#: messages, pings, and a message of zero-length fragments.
FLOOD = b"".join(
    [
        encode_frame(Opcode.TEXT, b"x", mask=MASK) * 50_000,
        encode_frame(Opcode.PING, b"p", mask=MASK) * 50_000,
        encode_frame(Opcode.TEXT, b"", fin=False, mask=MASK),
        encode_frame(Opcode.CONT, b"", fin=False, mask=MASK) * 50_000,
        encode_frame(Opcode.CONT, b"", mask=MASK),
    ]
)


#: Pings alone, from a client that never reads the Pongs.
PINGS = encode_frame(Opcode.PING, b"p", mask=MASK) * 150_000


def flood(sock: socket.socket, frames: bytes, seconds: float) -> int:
    """Send ``frames`` again and again for ``seconds``, reading nothing; return the bytes
    sent."""
    # Big frames first: read fast, they make TCP grow the server's receive buffer, so
    # that every read of the flood then fills the reader's buffer.
    big = encode_frame(Opcode.BINARY, bytes(60_000), mask=MASK) * 100
    for _ in range(20):
        sock.sendall(big)
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sock.sendall(frames)
        sent += len(frames)
    return sent


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["builtin", "gunicorn"])
def test_clients_flooding_small_frames_do_not_starve_the_others(kind: str) -> None:
    with stress_server(kind) as (server, port):
        client = RawClient(f"127.0.0.1:{port}", "/echo")
        before = rss_kib(port)
        # They read nothing, and their kernel buffers hold little of what comes back.
        flooders = [
            gevent.spawn(flood, handshake(port, "/sink", receive_buffer=4096), frames, 5.0)
            for frames in (FLOOD, PINGS)
        ]
        gevent.sleep(0.5)  # past the big frames
        round_trips = []
        while not all(flooder.ready() for flooder in flooders):
            started = time.monotonic()
            client.send_text("echo")
            # A loaded machine can make this outlast the keepalive interval.
            assert client.recv(timeout=30, skip_pings=True) == "echo"
            round_trips.append(time.monotonic() - started)
            gevent.sleep(0.05)
        sent = sum(flooder.get() for flooder in flooders)
        worst = max(round_trips)
        print(f"{kind}: {sent / 2**20:.0f} MiB of flood; worst echo round trip {worst:.3f} s")
        # Before the reader took turns: the whole flood (and gunicorn's WORKER TIMEOUT).
        assert worst < 0.1, round_trips
        assert "WORKER TIMEOUT" not in "\n".join(server.stderr.lines)
        # Their pings were answered by one Pong at a time: before, a Pong queued for each
        # (9-14 MB more here, growing as long as the pings came).
        grown = rss_kib(port) - before
        print(f"{kind}: the server grew by {grown} KiB")
        assert grown < 6 * 1024, grown
