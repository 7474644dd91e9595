"""geo_ws.client: the synchronous client, against real servers on loopback.

Most tests talk to a geo_ws server (the ``serve`` fixture); protocol edges a correct
server never produces (a lost connection, a bad handshake, a masked frame) come from a
raw gevent TCP server that speaks just enough HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import pytest
from flask import Flask, abort
from gevent import ssl as gssl
from gevent.queue import Queue
from gevent.server import StreamServer

from geo_ws import WebSocket
from geo_ws.client import ClientConnection, ResumingConnection, connect
from geo_ws.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeError,
    InvalidState,
)
from geo_ws.protocol.frames import Opcode, encode_frame
from geo_ws.protocol.machine import Close, Message, Ping, Protocol
from tests.helpers import WAIT
from tests.live_apps.process import run_python
from tests.live_apps.proxy import CuttingProxy

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def make_app() -> Flask:
    """An app with the endpoints these tests need."""
    app = Flask(__name__)

    echo = WebSocket(app, "/echo", max_message_size=2**22)

    @echo.on("message")
    def on_echo(msg: str | bytes) -> str | bytes:
        return msg

    greet = WebSocket(app, "/greet", subprotocols=["chat.v2", "chat.v1"])

    @greet.on("connect")
    def on_greet(ws: object) -> str:
        return "welcome"

    @greet.on("message")
    def on_greet_message(ws: object, msg: str) -> str:
        return f"subprotocol {getattr(ws, 'subprotocol', None)}"

    closing = WebSocket(app, "/closing")

    @closing.on("message")
    def on_closing(ws: object, msg: str) -> str:
        ws.close(4001, "bye now")  # type: ignore[attr-defined]
        return "last words"

    keepalive = WebSocket(app, "/keepalive", ping_interval=0.05, ping_timeout=0.3)

    @keepalive.on("message")
    def on_keepalive(msg: str) -> str:
        return msg

    @app.before_request
    def refuse() -> None:
        from flask import request

        if request.path == "/forbidden":
            abort(403)

    WebSocket(app, "/forbidden")

    resumable = WebSocket(app, "/resumable", recovery=True)

    @resumable.on("message")
    def on_resumable(ws: object, msg: str) -> str:
        if msg.startswith("close "):
            ws.close(int(msg.split()[1]))  # type: ignore[attr-defined]
        return msg

    sink = WebSocket(app, "/sink", max_message_size=2**20)

    @sink.on("message")
    def on_sink(msg: bytes) -> None:
        return None

    return app


@pytest.fixture
def address(serve: Callable[[Flask], str]) -> str:
    return serve(make_app())


@pytest.fixture
def client(address: str) -> Iterator[ClientConnection]:
    conn = connect(f"ws://{address}/echo", timeout=WAIT)
    yield conn
    conn.close(timeout=WAIT)


def test_text_and_binary_messages_come_back_with_their_type(client: ClientConnection) -> None:
    client.send("héllo")
    assert client.recv(timeout=WAIT) == "héllo"
    client.send(b"\x00\xffbinary")
    assert client.recv(timeout=WAIT) == b"\x00\xffbinary"
    client.send(bytearray(b"ba"))
    assert client.recv(timeout=WAIT) == b"ba"
    assert client.response_headers["upgrade"].lower() == "websocket"
    assert client.close_code is None and not client.closed


def test_large_messages_cross_a_full_send_buffer(client: ClientConnection) -> None:
    # 3 MiB is more than the kernel buffers at once: the writer waits for room.
    payload = os.urandom(3 * 2**20)
    client._connection.protocol.max_message_size = None
    client.send(payload)
    assert client.recv(timeout=WAIT) == payload


def test_a_sender_waits_for_a_slow_server_rather_than_overflow(address: str) -> None:
    # 48 MiB sent without reading: far more than the outbox takes (16 MiB). Each send
    # waits while the kernel's buffer is full, as a blocking client's would.
    with connect(f"ws://{address}/sink", timeout=WAIT) as conn:
        chunk = os.urandom(2**20)
        for _ in range(48):
            conn.send(chunk)
        assert conn.ping(timeout=WAIT) > 0
        assert not conn.closed


def test_sends_from_many_greenlets_never_interleave(client: ClientConnection) -> None:
    # 10 MB in all: the send buffer fills, so writers wait for room, and in turn.
    def message(sender: int, i: int) -> str:
        return f"{sender}-{i}-" + "x" * 200_000

    def send_some(sender: int) -> None:
        for i in range(5):
            client.send(message(sender, i))

    senders = [gevent.spawn(send_some, sender) for sender in range(10)]
    received = [client.recv(timeout=WAIT) for _ in range(50)]
    assert gevent.joinall(senders, timeout=WAIT, raise_error=True)
    assert sorted(received) == sorted(message(s, i) for s in range(10) for i in range(5))
    # Each sender's messages arrive in its order.
    for sender in range(10):
        mine = [m for m in received if m.startswith(f"{sender}-")]  # type: ignore[union-attr]
        assert mine == [message(sender, i) for i in range(5)]


def test_a_message_sent_with_the_handshake_response_is_kept(address: str) -> None:
    with connect(f"ws://{address}/greet", timeout=WAIT) as conn:
        assert conn.recv(timeout=WAIT) == "welcome"


def test_subprotocol_negotiated(address: str) -> None:
    with connect(f"ws://{address}/greet", subprotocols=["chat.v1"], timeout=WAIT) as conn:
        assert conn.subprotocol == "chat.v1"
        assert conn.recv(timeout=WAIT) == "welcome"
        conn.send("which?")
        assert conn.recv(timeout=WAIT) == "subprotocol chat.v1"


def test_recv_timeout_leaves_the_connection_usable(client: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        client.recv(timeout=0.05)
    client.send("still there")
    assert client.recv(timeout=WAIT) == "still there"


def test_recv_timeout_counts_from_the_call_after_blocking_code_unpatched(address: str) -> None:
    # The quickstart: the client works in any script, patched or not.
    script = f"""if True:
        import time
        from geo_ws.client import connect
        client = connect("ws://{address}/echo")
        client.send("hi")
        time.sleep(1)  # unpatched: gevent's loop does not run, nor see the time pass
        print(client.recv(timeout=1))  # the echo is waiting
        time.sleep(1)
        started = time.monotonic()
        try:
            client.recv(timeout=0.5)
        except TimeoutError:
            print(f"timed out after {{time.monotonic() - started:.1f}} s")
        client.close()
    """
    result = run_python("-c", script)
    assert result.returncode == 0, result.stderr
    # Before, both timed out at once: the loop's clock was a second behind.
    assert result.stdout.splitlines() == ["hi", "timed out after 0.5 s"]


def test_ping_returns_the_round_trip(client: ClientConnection) -> None:
    rtt = client.ping(timeout=WAIT)
    assert 0 < rtt < WAIT


def test_ping_while_another_greenlet_waits_in_recv(client: ClientConnection) -> None:
    reader = gevent.spawn(client.recv, WAIT)
    gevent.sleep(0)  # the reader is now blocked in recv
    assert client.ping(timeout=WAIT) > 0
    client.send("for the reader")
    assert reader.get(timeout=WAIT) == "for the reader"


def test_only_one_greenlet_reads(client: ClientConnection) -> None:
    reader = gevent.spawn(client.recv, WAIT)
    gevent.sleep(0)
    with pytest.raises(InvalidState):
        client.recv(timeout=WAIT)
    client.send("one")
    assert reader.get(timeout=WAIT) == "one"


def test_server_pings_are_answered_while_waiting_in_recv(address: str) -> None:
    # The endpoint pings every 50 ms and drops a client that misses a pong for 300 ms.
    with connect(f"ws://{address}/keepalive", timeout=WAIT) as conn:
        with pytest.raises(TimeoutError):
            conn.recv(timeout=0.6)
        conn.send("alive")
        assert conn.recv(timeout=WAIT) == "alive"


def test_server_close_delivers_earlier_messages_then_raises(address: str) -> None:
    conn = connect(f"ws://{address}/closing", timeout=WAIT)
    conn.send("close me")
    assert conn.recv(timeout=WAIT) == "last words"
    with pytest.raises(ConnectionClosedError) as info:
        conn.recv(timeout=WAIT)
    assert (info.value.code, info.value.reason) == (4001, "bye now")
    assert (conn.close_code, conn.close_reason) == (4001, "bye now")
    with pytest.raises(ConnectionClosed):
        conn.send("too late")
    conn.close()  # already closed: nothing to do


def test_close_handshake_then_operations_fail(client: ClientConnection) -> None:
    client.close(1000, "done")
    assert client.close_code == 1000
    assert client.closed
    with pytest.raises(ConnectionClosedOK):
        client.send("x")
    with pytest.raises(ConnectionClosedOK):
        client.recv(timeout=WAIT)
    with pytest.raises(ConnectionClosedOK):
        client.ping()


def test_close_from_another_greenlet_ends_a_pending_recv(client: ClientConnection) -> None:
    reader = gevent.spawn(client.recv, WAIT)
    gevent.sleep(0)
    client.close(timeout=WAIT)
    with pytest.raises(ConnectionClosedOK):
        reader.get(timeout=WAIT)
    assert client.close_code == 1000


def test_iteration_ends_at_a_normal_close(address: str) -> None:
    conn = connect(f"ws://{address}/echo", timeout=WAIT)
    for text in ("a", "b"):
        conn.send(text)
    got = []
    for message in conn:
        got.append(message)
        if len(got) == 2:
            gevent.spawn(conn.close, 1000)
    assert got == ["a", "b"]


def test_refused_handshake_carries_the_status(address: str) -> None:
    with pytest.raises(HandshakeError) as info:
        connect(f"ws://{address}/forbidden", timeout=WAIT)
    assert info.value.status == 403
    with pytest.raises(HandshakeError) as info:
        connect(f"ws://{address}/nowhere", timeout=WAIT)
    assert info.value.status == 404


def test_connection_refused_and_bad_urls() -> None:
    server = StreamServer(("127.0.0.1", 0), lambda sock, address: None)
    server.start()
    port = server.address[1]
    server.stop()  # nothing listens on this port any more
    with pytest.raises(ConnectionRefusedError):
        connect(f"ws://127.0.0.1:{port}/", timeout=WAIT)
    with pytest.raises(ValueError):
        connect("http://127.0.0.1/", timeout=WAIT)


# --- resume=True ---------------------------------------------------------------------------------


def wait_dropped(conn: ResumingConnection) -> None:
    """Until the client has seen its connection reset (it reads in the event loop)."""
    with gevent.Timeout(WAIT):
        while conn.connected:
            gevent.sleep(0.01)


def test_resume_needs_an_endpoint_with_recovery(address: str) -> None:
    with pytest.raises(HandshakeError, match="has no recovery"):
        connect(f"ws://{address}/echo", resume=True, timeout=WAIT)
    with pytest.raises(ValueError, match="subprotocol"):
        connect(f"ws://{address}/resumable", resume=True, subprotocols=["x"])


@pytest.mark.parametrize("code", [1000, 4001])
def test_a_resuming_client_does_not_come_back_after_a_close_on_purpose(
    address: str, code: int
) -> None:
    proxy = CuttingProxy(address)
    try:
        with connect(f"ws://{proxy.address}/resumable", resume=True, timeout=WAIT) as conn:
            assert repr(conn).startswith("<ResumingConnection ws://")
            conn.send(f"close {code}")
            assert conn.recv(timeout=WAIT) == f"close {code}"  # the handler's return value
            with pytest.raises(ConnectionClosed):
                conn.recv(timeout=WAIT)
            assert conn.closed
            assert conn.close_code == code
            assert (conn.reconnects, proxy.accepted) == (0, 1)
    finally:
        proxy.stop()


def test_a_send_while_reconnecting_waits_for_the_connection(address: str) -> None:
    proxy = CuttingProxy(address)
    try:
        with ResumingConnection(f"ws://{proxy.address}/resumable", timeout=WAIT) as conn:
            proxy.cut(pause=True)
            wait_dropped(conn)
            sender = gevent.spawn(conn.send, "meanwhile")
            gevent.sleep(0.3)
            assert not sender.dead  # waits: no connection to send on
            proxy.paused = False
            sender.get(timeout=WAIT)
            assert conn.recv(timeout=WAIT) == "meanwhile"
            assert conn.reconnects == 1
    finally:
        proxy.stop()


def test_a_resuming_client_closed_while_reconnecting_stops_at_once(address: str) -> None:
    proxy = CuttingProxy(address)
    try:
        conn = ResumingConnection(f"ws://{proxy.address}/resumable", timeout=WAIT)
        assert conn.ping(timeout=WAIT) >= 0
        proxy.cut(pause=True)
        wait_dropped(conn)
        with pytest.raises(ConnectionClosedError):
            conn.ping()
        with gevent.Timeout(1):
            conn.close(1000, "bye")
        assert (conn.close_code, conn.close_reason) == (1000, "bye")
        with pytest.raises(ConnectionClosedOK):
            conn.recv(timeout=WAIT)
    finally:
        proxy.stop()


def test_a_resuming_client_gives_up_after_reconnect_for(address: str) -> None:
    proxy = CuttingProxy(address)
    try:
        conn = ResumingConnection(
            f"ws://{proxy.address}/resumable", timeout=WAIT, reconnect_for=0.3, send_timeout=0.2
        )
        proxy.cut(pause=True)
        with pytest.raises(ConnectionClosedError) as info:
            conn.recv(timeout=WAIT)
        assert info.value.code == 1006
        assert conn.closed
        with pytest.raises(ConnectionClosedError):
            conn.send("too late")
        conn.close()  # over already: nothing to do
    finally:
        proxy.stop()


# --- a raw server, for what a correct geo_ws server never does ------------------------------------


def raw_server(
    script: Callable[[object, str], None], ssl_context: gssl.SSLContext | None = None
) -> StreamServer:
    """A TCP server (TLS with ``ssl_context``) that reads the handshake request and runs
    ``script(sock, key)``: it answers, and goes on."""

    def handle(sock: object, address: object) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)  # type: ignore[attr-defined]
            if not chunk:
                return
            head += chunk
        key = ""
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "sec-websocket-key":
                key = value.strip()
        script(sock, key)

    if ssl_context is None:
        server = StreamServer(("127.0.0.1", 0), handle)
    else:
        server = StreamServer(("127.0.0.1", 0), handle, ssl_context=ssl_context)
    server.start()
    return server


def accept(key: str, extra: str = "") -> bytes:
    digest = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {digest}\r\n{extra}\r\n"
    ).encode()


def test_a_lost_connection_is_1006() -> None:
    def script(sock: object, key: str) -> None:
        sock.sendall(accept(key) + encode_frame(Opcode.TEXT, b"bye"))  # type: ignore[attr-defined]
        sock.close()  # type: ignore[attr-defined]

    server = raw_server(script)
    try:
        conn = connect(f"ws://127.0.0.1:{server.address[1]}/", timeout=WAIT)
        assert conn.recv(timeout=WAIT) == "bye"
        with pytest.raises(ConnectionClosedError) as info:
            conn.recv(timeout=WAIT)
        assert info.value.code == 1006
        assert conn.close_code == 1006
    finally:
        server.stop()


def test_a_server_ping_gets_its_pong_and_a_masked_frame_fails_1002() -> None:
    frames: Queue[bytes] = Queue()

    def script(sock: object, key: str) -> None:
        sock.sendall(accept(key) + encode_frame(Opcode.PING, b"hey"))  # type: ignore[attr-defined]
        frames.put(sock.recv(4096))  # type: ignore[attr-defined]
        # Servers must not mask: the client fails the connection with 1002.
        sock.sendall(encode_frame(Opcode.TEXT, b"x", mask=b"abcd"))  # type: ignore[attr-defined]
        frames.put(sock.recv(4096))  # type: ignore[attr-defined]

    server = raw_server(script)
    try:
        conn = connect(f"ws://127.0.0.1:{server.address[1]}/", timeout=WAIT)
        with pytest.raises(ConnectionClosedError) as info:
            conn.recv(timeout=WAIT)
        assert info.value.code == 1002
        # Client frames are masked: byte 1 has the mask bit; "hey" is 3 bytes.
        pong = frames.get(timeout=WAIT)
        assert pong[0] == 0x8A and pong[1] == 0x80 | 3
        close = frames.get(timeout=WAIT)
        assert close[0] == 0x88 and close[1] == 0x80 | len(close[6:])
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (lambda key: accept("not-the-key"), "Sec-WebSocket-Accept"),
        (lambda key: accept(key, "Sec-WebSocket-Protocol: evil\r\n"), "subprotocol"),
        (lambda key: accept(key, "Sec-WebSocket-Extensions: x\r\n"), "extension"),
        (lambda key: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "refused"),
        (lambda key: b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP response"),
    ],
)
def test_a_wrong_handshake_response_is_refused(
    response: Callable[[str], bytes], message: str
) -> None:
    server = raw_server(lambda sock, key: sock.sendall(response(key)))  # type: ignore[attr-defined]
    try:
        with pytest.raises(HandshakeError, match=message):
            connect(f"ws://127.0.0.1:{server.address[1]}/", timeout=WAIT)
    finally:
        server.stop()


def test_handshake_timeout() -> None:
    server = raw_server(lambda sock, key: gevent.sleep(WAIT))
    try:
        with pytest.raises(TimeoutError):
            connect(f"ws://127.0.0.1:{server.address[1]}/", timeout=0.1)
    finally:
        server.stop(timeout=0)


def tls_echo(sock: object, key: str) -> None:
    """A raw server's script: echo every message, answer the Close."""
    sock.sendall(accept(key))  # type: ignore[attr-defined]
    protocol = Protocol(max_message_size=None)
    while True:
        data = sock.recv(65536)  # type: ignore[attr-defined]
        for event in protocol.receive_data(data) if data else protocol.receive_eof():
            if isinstance(event, Message):
                opcode = Opcode.TEXT if isinstance(event.data, str) else Opcode.BINARY
                payload = event.data.encode() if isinstance(event.data, str) else event.data
                sock.sendall(encode_frame(opcode, payload))  # type: ignore[attr-defined]
            elif isinstance(event, Ping):
                sock.sendall(encode_frame(Opcode.PONG, event.payload))  # type: ignore[attr-defined]
            elif isinstance(event, Close):
                if protocol.close_received:
                    sock.sendall(protocol.send_close(event.code))  # type: ignore[attr-defined]
                sock.close()  # type: ignore[attr-defined]
                return


def test_wss_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=WAIT * 4,
    )
    server_context = gssl.SSLContext(gssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(str(cert), str(key))
    server = raw_server(tls_echo, server_context)
    try:
        context = gssl.create_default_context(cafile=str(cert))
        url = f"wss://127.0.0.1:{server.address[1]}/echo"
        with connect(url, ssl_context=context, timeout=WAIT) as conn:
            payload = os.urandom(3 * 2**20)  # more than TLS and the kernel buffer at once
            conn._connection.protocol.max_message_size = None
            conn.send(payload)
            conn.send("and text")
            assert conn.recv(timeout=WAIT) == payload
            assert conn.recv(timeout=WAIT) == "and text"
            assert conn.ping(timeout=WAIT) > 0
        assert conn.close_code == 1000
        # Without the certificate, verification fails.
        with pytest.raises(gssl.SSLError):
            connect(url, timeout=WAIT)
    finally:
        server.stop(timeout=0)
