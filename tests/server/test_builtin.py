"""geo_ws's built-in server: the monkey-patching guard, graceful shutdown, one port."""

from __future__ import annotations

import contextlib
import contextvars
import gc
import io
import json
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import gevent
import pytest
import websocket
from flask import Flask, request
from gevent.event import Event
from gevent.pool import Pool

from geo_ws.flask.endpoint import WebSocket
from geo_ws.protocol.frames import Opcode, encode_frame
from geo_ws.protocol.machine import Message, Protocol
from geo_ws.server.builtin import Server
from tests.helpers import WAIT, RawClient
from tests.live_apps.closing import app as closing_app
from tests.live_apps.process import TIMEOUT_FACTOR, ServerProcess, run_python

Serve = Callable[[Any], str]  # the serve fixture of conftest.py

CLOSED = re.compile(r"^close handler ran for (\S+)$")
SHUTTING_DOWN = re.compile(r"shutting down: closing (\d+) WebSocket\(s\)")


def closing_server(*options: str) -> ServerProcess:
    """``python -m geo_ws run tests.live_apps.closing:app --port 0 OPTIONS``."""
    return ServerProcess(
        "-m", "geo_ws", "run", "tests.live_apps.closing:app", "--port", "0", *options
    )


def close_handler_runs(server: ServerProcess) -> list[str]:
    """The names the live app's close handler printed, once the process has exited."""
    lines = server.stdout.finish()
    return sorted(match.group(1) for line in lines if (match := CLOSED.match(line)))


def test_run_refuses_to_start_without_monkey_patching() -> None:
    script = "from flask import Flask\nimport geo_ws\ngeo_ws.run(Flask('unpatched'), port=0)\n"
    result = run_python("-c", script)
    assert result.returncode != 0, result
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert "from gevent import monkey" in lines, result.stderr
    assert "monkey.patch_all()" in lines, result.stderr
    assert lines.index("from gevent import monkey") < lines.index("monkey.patch_all()")
    assert "serving on" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_sends_close_handler_result_then_1001_and_exits_0(signum: int) -> None:
    graceful_timeout = 10.0
    with closing_server("--graceful-timeout", str(graceful_timeout)) as server:
        host, port = server.wait_serving()
        address = f"{host}:{port}"
        clients = [RawClient(address, f"/ws?name={name}") for name in ("one", "two")]
        try:
            for client in clients:
                assert client.status == 101
                # The connect handler ran: the server holds this connection.
                assert client.recv() == "welcome"
            server.proc.send_signal(signum)
            for client in clients:
                assert client.recv() == "bye"  # the close handler's return value first
                assert client.recv_close().code == 1001  # then the server's Close
            server.stderr.wait_for(SHUTTING_DOWN, WAIT)
            for client in clients:
                client.send_close(1001)
            # Well within the graceful timeout: the handshakes completed, nothing waited it out.
            assert server.wait(timeout=graceful_timeout / 2) == 0
            for client in clients:
                assert client.at_eof()
        finally:
            for client in clients:
                client.close()
        assert close_handler_runs(server) == ["one", "two"]
        assert any(
            (match := SHUTTING_DOWN.search(line)) and match.group(1) == "2"
            for line in server.stderr.lines
        ), server.stderr.lines


def test_client_that_never_answers_close_cannot_hold_the_shutdown() -> None:
    with closing_server("--graceful-timeout", "1") as server:
        host, port = server.wait_serving()
        client = RawClient(f"{host}:{port}", "/ws?name=silent")
        try:
            assert client.recv() == "welcome"
            start = gevent.get_hub().loop.now()
            server.proc.send_signal(signal.SIGTERM)
            assert client.recv() == "bye"
            assert client.recv_close().code == 1001
            # The client never answers the Close (RawClient answers nothing by itself).
            assert server.wait(timeout=5) == 0
            # Connection.close_timeout is 5 s; --graceful-timeout 1 must cut it short.
            assert gevent.get_hub().loop.now() - start < 4 * TIMEOUT_FACTOR
            assert client.at_eof()
        finally:
            client.close()
        assert close_handler_runs(server) == ["silent"]


def test_shutdown_in_process_sends_1001_and_stops_listening() -> None:
    server = Server(("127.0.0.1", 0), closing_app, log=None)
    server.start()
    address = f"127.0.0.1:{server.address[1]}"
    client = RawClient(address, "/ws?name=inprocess")
    stopper = None
    try:
        assert client.recv() == "welcome"
        assert len(server.connections) == 1
        stopper = gevent.spawn(server.shutdown, 5)
        assert client.recv() == "bye"
        assert client.recv_close().code == 1001
        client.send_close(1001)
        assert client.at_eof()
        stopper.join(timeout=WAIT)
        assert stopper.successful(), stopper.exception
        assert server.connections == set()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.address[1]), timeout=2).close()
    finally:
        client.close()
        if stopper is None or not stopper.dead:
            server.shutdown(timeout=1)


def test_shutdown_kills_a_handler_still_busy_at_the_deadline() -> None:
    # The handler runs on a worker greenlet (the connection parked after connecting),
    # outside the server's pool: shutdown must still end it, and run the close handler.
    app = Flask(__name__)
    endpoint = WebSocket(app, "/ws")
    busy, closed = Event(), Event()

    @endpoint.on("message")
    def message() -> None:
        busy.set()
        gevent.sleep(60)

    endpoint.on("close")(closed.set)
    server = Server(("127.0.0.1", 0), app, log=None)
    server.start()
    client = RawClient(f"127.0.0.1:{server.address[1]}", "/ws")
    try:
        client.send_text("work")
        assert busy.wait(WAIT)
        with gevent.Timeout(WAIT):
            server.shutdown(timeout=0.5)
        assert closed.is_set()
        assert server.connections == set()
    finally:
        client.close()


def test_a_bounded_pool_counts_every_open_websocket() -> None:
    # gunicorn's --worker-connections: an idle WebSocket holds no greenlet, but a place.
    server = Server(("127.0.0.1", 0), closing_app, log=None, spawn=Pool(2))
    server.start()
    address = f"127.0.0.1:{server.address[1]}"
    try:
        first, second = RawClient(address, "/ws"), RawClient(address, "/ws")
        assert first.recv() == second.recv() == "welcome"
        assert len(server.connections.detached) == 2
        third = socket.create_connection(("127.0.0.1", server.address[1]), timeout=WAIT)
        third.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        third.settimeout(0.5)
        with pytest.raises(TimeoutError):
            third.recv(1)  # not accepted: both places are taken
        first.send_close(1000)
        third.settimeout(WAIT)
        assert third.recv(12) == b"HTTP/1.1 101"
        third.close()
    finally:
        server.shutdown(timeout=1)


def test_http_routes_and_websocket_share_one_port(serve: Serve) -> None:
    address = serve(closing_app)
    with urllib.request.urlopen(f"http://{address}/", timeout=WAIT) as response:
        assert response.status == 200
        assert response.read() == b"ok"
    ws = websocket.create_connection(f"ws://{address}/ws?name=shared", timeout=WAIT)
    try:
        assert ws.recv() == "welcome"
        ws.send("ping")
        assert ws.recv() == "ping"
        # A plain GET on the WebSocket path, on the same port, is told to upgrade.
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://{address}/ws", timeout=WAIT)
        assert info.value.code == 426
        # The HTTP route still answers while the WebSocket is open.
        with urllib.request.urlopen(f"http://{address}/", timeout=WAIT) as response:
            assert response.read() == b"ok"
        ws.send("still open")
        assert ws.recv() == "still open"
    finally:
        ws.close()


def test_shutdown_twice_is_harmless() -> None:
    server = Server(("127.0.0.1", 0), closing_app, log=None)
    server.start()
    server.shutdown(timeout=1)
    server.shutdown(timeout=1)
    assert server.closed
    assert server.connections == set()


def test_idle_keep_alive_http_connection_does_not_hold_the_shutdown() -> None:
    # A browser that loaded a page keeps its HTTP/1.1 connection open, idle. Shutdown
    # waits (bounded) for closing handshakes and close handlers, not for that client's
    # next request: with no WebSocket open, the process should exit at once.
    graceful_timeout = 10.0
    with closing_server("--graceful-timeout", str(graceful_timeout)) as server:
        host, port = server.wait_serving()
        browser = socket.create_connection((host, port), timeout=WAIT)
        try:
            browser.sendall(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            response = b""
            with gevent.Timeout(WAIT):
                while not response.endswith(b"\r\n\r\nok"):
                    chunk = browser.recv(4096)
                    assert chunk, response
                    response += chunk
            assert response.startswith(b"HTTP/1.1 200 ")
            server.proc.send_signal(signal.SIGTERM)
            server.stderr.wait_for(SHUTTING_DOWN, WAIT)
            # Not the full graceful timeout: 3 s leaves ample room for a prompt exit.
            try:
                exit_code = server.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    "still running 3 s after SIGTERM with no WebSocket open: the idle "
                    f"keep-alive HTTP connection holds the shutdown until --graceful-timeout "
                    f"({graceful_timeout} s)"
                )
            assert exit_code == 0
        finally:
            browser.close()


def test_a_slow_request_head_is_cut_off_and_others_are_served() -> None:
    server = Server(("127.0.0.1", 0), closing_app, handshake_timeout=0.3, log=None)
    server.start()
    try:
        address = f"127.0.0.1:{server.address[1]}"
        slow = socket.create_connection(("127.0.0.1", server.address[1]), timeout=WAIT)
        slow.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the rest
        normal = RawClient(address, "/ws")
        assert normal.recv() == "welcome"
        with gevent.Timeout(WAIT):
            assert slow.recv(100) == b""  # closed by the server, no response
        normal.send_text("still here")
        assert normal.recv() == "still here"
    finally:
        server.shutdown(timeout=1)


def test_a_client_that_sends_nothing_is_closed_after_the_handshake_timeout() -> None:
    # It is waited for by the event loop, without a greenlet, then dropped.
    server = Server(("127.0.0.1", 0), closing_app, handshake_timeout=0.3, log=None)
    server.start()
    try:
        silent = socket.create_connection(("127.0.0.1", server.address[1]), timeout=WAIT)
        started = time.monotonic()
        with gevent.Timeout(WAIT):
            assert silent.recv(100) == b""
        assert time.monotonic() - started > 0.2
        silent.close()
    finally:
        server.shutdown(timeout=1)


def test_shutdown_closes_clients_that_have_sent_nothing_yet() -> None:
    server = Server(("127.0.0.1", 0), closing_app, handshake_timeout=60, log=None)
    server.start()
    silent = socket.create_connection(("127.0.0.1", server.address[1]), timeout=WAIT)
    try:
        with gevent.Timeout(WAIT):
            while not server._first_bytes:  # accepted, waited for by the event loop
                gevent.sleep(0.01)
        with gevent.Timeout(2):  # not the handshake timeout, nor the graceful one
            server.shutdown(timeout=10)
            assert silent.recv(100) == b""
    finally:
        silent.close()


def test_each_client_is_handled_in_a_context_of_its_own(serve: Serve) -> None:
    # Handlers run on greenlets that go on to the next client: what one request left in
    # a context variable must not be seen by the next.
    user: contextvars.ContextVar[str] = contextvars.ContextVar("user")
    app = Flask(__name__)

    @app.get("/set/<name>")
    def set_user(name: str) -> str:
        previous = user.get("nobody")
        user.set(name)
        return previous

    address = serve(app)
    for name in ("alice", "bob"):
        with urllib.request.urlopen(f"http://{address}/set/{name}", timeout=WAIT) as response:
            assert response.read() == b"nobody"


def test_request_headers_over_16_kib_get_431(serve: Serve) -> None:
    address = serve(closing_app)
    big = RawClient(address, "/ws", {f"X-Filler-{n}": "x" * 1000 for n in range(17)})
    assert big.status == 431
    fits = RawClient(address, "/ws", {f"X-Filler-{n}": "x" * 1000 for n in range(14)})
    assert fits.status == 101


def test_frames_sent_right_behind_the_handshake_are_not_lost(serve: Serve) -> None:
    address = serve(closing_app)
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT)
    head = (
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    # One write: the request parser buffers the frame along with the head.
    sock.sendall(head.encode() + encode_frame(Opcode.TEXT, b"eager", mask=b"abcd"))
    protocol, events = Protocol(client=True), []
    with gevent.Timeout(WAIT):
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        events += protocol.receive_data(data.partition(b"\r\n\r\n")[2])
        while len(events) < 2:
            events += protocol.receive_data(sock.recv(4096))
    assert events[:2] == [Message("welcome"), Message("eager")]
    sock.close()


def test_http_requests_read_whole_behind_the_quick_path(serve: Serve) -> None:
    # The quick path reads the first bytes; pywsgi's handler reads them again, then the
    # socket: a body sent with its head, and a request pipelined behind it, both arrive.
    app = Flask(__name__)

    @app.post("/echo")
    def echo() -> bytes:
        return request.get_data()

    host, port = serve(app).split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT)
    body = b"x" * 20_000  # more than pywsgi's buffer and the quick path's first read
    request_ = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
    sock.sendall(request_ % (5, b"first") + request_ % (len(body), body))
    data = b""
    with gevent.Timeout(WAIT):
        while not data.endswith(body):
            chunk = sock.recv(65536)
            assert chunk, data[:300]
            data += chunk
    assert data.count(b"HTTP/1.1 200 ") == 2
    assert b"\r\n\r\nfirst" in data
    sock.close()


def test_websockets_over_tls(tmp_path: Any) -> None:
    import ssl

    from geo_ws.client import connect as wss_connect

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = Server(("127.0.0.1", 0), closing_app, log=None, ssl_context=server_context)
    server.start()
    try:
        context = ssl.create_default_context(cafile=str(cert))
        url = f"wss://127.0.0.1:{server.address[1]}/ws"
        with wss_connect(url, ssl_context=context, timeout=WAIT) as client:
            assert client.recv(timeout=WAIT) == "welcome"
            for size in (10, 100_000):  # small frames and one larger than a TLS record
                client.send("x" * size)
                assert client.recv(timeout=WAIT) == "x" * size
    finally:
        server.shutdown(timeout=1)


# -- the quick path for handshakes that arrive whole ------------------------------------

UPGRADE_HEAD = (
    "GET /env/caf%C3%A9?a=1&b=%20 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
    "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\nX-Twice: one\r\nX-Twice: two\r\nCookie: a=1\r\n"
    "Cookie: b=2\r\nX_Sneaky: dropped\r\nOrigin: http://h\r\n\r\n"
)


def environ_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Answers any request with its environ's plain values, as JSON."""
    plain = {key: value for key, value in environ.items() if isinstance(value, (str, bool))}
    body = json.dumps(plain).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def exchange(port: int, request: str, pieces: int = 1) -> tuple[str, bytes]:
    """Send ``request`` (in ``pieces`` writes, a little apart); return the head and body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    data = request.encode()
    step = -(-len(data) // pieces)
    for start in range(0, len(data), step):
        sock.sendall(data[start : start + step])
        gevent.sleep(0.05)
    response = b""
    with gevent.Timeout(WAIT):
        while b"\r\n\r\n" not in response:
            response += sock.recv(65536)
        head, _, body = response.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += sock.recv(65536)
    sock.close()
    return head.decode("latin-1"), body


def start_server(app: Any, **options: Any) -> Server:
    server = Server(("127.0.0.1", 0), app, log=None)
    for name, value in options.items():
        setattr(server, name, value)
    server.start()
    return server


def test_the_quick_path_builds_the_environ_pywsgi_would() -> None:
    quick, full = start_server(environ_app), start_server(environ_app, quick_handshakes=False)
    try:
        quick_head, quick_body = exchange(quick.address[1], UPGRADE_HEAD)
        full_head, full_body = exchange(full.address[1], UPGRADE_HEAD)
    finally:
        quick.shutdown(timeout=1)
        full.shutdown(timeout=1)
    assert quick_head.startswith("HTTP/1.1 200") and full_head.startswith("HTTP/1.1 200")
    assert "Connection: close" in quick_head  # a refused upgrade ends the connection
    seen, expected = json.loads(quick_body), json.loads(full_body)
    for differs in ("REMOTE_PORT", "SERVER_PORT", "wsgi.input_terminated"):
        seen.pop(differs), expected.pop(differs)
    assert seen == expected
    assert seen["PATH_INFO"] == "/env/caf\u00c3\u00a9"  # WSGI's latin-1 of the UTF-8 bytes
    assert seen["HTTP_X_TWICE"] == "one,two"
    assert seen["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_X_SNEAKY" not in seen


def test_a_handshake_in_pieces_is_served_by_the_full_parser(serve: Serve) -> None:
    address = serve(closing_app)
    port = int(address.split(":")[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    request = UPGRADE_HEAD.replace("/env/caf%C3%A9?a=1&b=%20", "/ws").encode()
    sock.sendall(request[:40])
    gevent.sleep(0.1)  # the server peeks at an incomplete head
    sock.sendall(request[40:])
    protocol = Protocol(client=True)
    with gevent.Timeout(WAIT):
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        head, _, rest = data.partition(b"\r\n\r\n")
        events = protocol.receive_data(rest)
        while not events:
            events = protocol.receive_data(sock.recv(4096))
    assert head.startswith(b"HTTP/1.1 101")
    assert events[0] == Message("welcome")
    sock.close()


def test_a_refused_quick_handshake_gets_the_apps_response_then_eof(serve: Serve) -> None:
    client = RawClient(serve(closing_app), "/nowhere")
    assert client.status == 404
    assert "Connection: close" in client.response_head
    assert client.at_eof()


def test_an_app_failing_on_the_quick_path_answers_500(serve: Serve) -> None:
    def failing(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("boom")

    client = RawClient(serve(failing), "/ws")
    assert client.status == 500
    assert client.at_eof()


def test_the_quick_path_writes_the_access_log() -> None:
    log = io.StringIO()
    server = Server(("127.0.0.1", 0), closing_app, log=log)
    server.start()
    try:
        client = RawClient(f"127.0.0.1:{server.address[1]}", "/ws")
        assert client.recv() == "welcome"
        client.send_close()
        client.recv_close()
        refused = RawClient(f"127.0.0.1:{server.address[1]}", "/nowhere")
        assert refused.at_eof()
    finally:
        server.shutdown(timeout=1)
    lines = log.getvalue().splitlines()
    assert any(re.search(r'"GET /ws HTTP/1.1" 101 - \d+\.\d+$', line) for line in lines), lines
    assert any(re.search(r'"GET /nowhere HTTP/1.1" 404 \d+ ', line) for line in lines), lines


def test_a_closed_connection_leaves_no_cyclic_garbage() -> None:
    # Freed by reference counting, a closed connection costs the collector nothing: with
    # thousands of connections, full collections were the handshake's largest cost.
    server = Server(("127.0.0.1", 0), closing_app, log=None)
    server.start()
    address = f"127.0.0.1:{server.address[1]}"

    def one_session() -> None:
        client = RawClient(address, "/ws?name=gc")
        assert client.recv() == "welcome"
        client.send_close()
        client.recv_close()
        assert client.at_eof()
        client.close()
        assert server.connections.none_left.wait(WAIT)  # the server's side is over too

    try:
        one_session()  # first use: imports and caches
        gc.collect()
        gc.disable()
        try:
            one_session()
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            garbage = [type(item) for item in gc.garbage]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    finally:
        server.shutdown(timeout=1)
    ours = [kind for kind in garbage if kind.__module__.startswith("geo_ws")]
    frames = [kind for kind in garbage if kind.__name__ in ("frame", "traceback")]
    assert ours == [] and frames == [], garbage


# -- what a request head may be (RFC 9112) ----------------------------------------------

UPGRADE_FIELDS = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
)
ACCESS_LINE = re.compile(r'^127\.0\.0\.1 - - \[[^]]+\] "[ -~]*" \d{3} (\d+|-) \d+\.\d+$')


def send_raw(port: int, data: bytes) -> bytes:
    """Send ``data`` in one write; return all the server sends until it closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        sock.sendall(data)
        received = b""
        with gevent.Timeout(WAIT):
            while chunk := sock.recv(65536):
                received += chunk
        return received
    finally:
        sock.close()


@pytest.mark.parametrize(
    "head",
    [
        f"GET /ws\nFORGED-LINE HTTP/1.1\r\nHost: x\r\n{UPGRADE_FIELDS}\r\n",
        f"GET /no HTTP/1.1\r\nHost: x\r\nUser-Agent: curl\nFORGED-LINE\r\n{UPGRADE_FIELDS}\r\n",
        f"GET /ws HTTP/1.1\r\nHost: x\r\nUser-Agent: curl\rFORGED-LINE\r\n{UPGRADE_FIELDS}\r\n",
        "GET /\rFORGED-LINE HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: curl\nFORGED-LINE\r\n\r\n",
        "GET / HTTP/1.1\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\n\n",
    ],
    ids=[
        "LF-in-target",
        "LF-in-header",
        "CR-in-header",
        "CR-in-target-http",
        "LF-in-header-http",
        "LF-ending-request-line",
        "LF-ending-head",
    ],
)
def test_a_bare_cr_or_lf_in_a_head_gets_400_and_forges_no_log_line(head: str) -> None:
    log = io.StringIO()
    server = Server(("127.0.0.1", 0), closing_app, log=log)
    server.start()
    try:
        response = send_raw(server.address[1], head.encode("latin-1"))
    finally:
        server.shutdown(timeout=1)
    assert response.startswith(b"HTTP/1.1 400 "), response
    assert b"Connection: close\r\n" in response
    # One line of the log, in its format, and nothing but printable characters.
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and ACCESS_LINE.match(lines[0]), lines


def test_what_a_client_sent_is_logged_with_control_characters_escaped() -> None:
    log = io.StringIO()
    server = Server(("127.0.0.1", 0), closing_app, log=log)
    server.start()
    try:
        # Each as an HTTP request, then as a handshake (the quick path).
        for target in ("/x\x1b[2J\x07", '/x"quoted"\\'):
            for fields in ("Connection: close\r\n", UPGRADE_FIELDS):
                head = f"GET {target} HTTP/1.1\r\n{fields}\r\n"
                send_raw(server.address[1], head.encode("latin-1"))
    finally:
        server.shutdown(timeout=1)
    lines = log.getvalue().splitlines()
    assert len(lines) == 4 and all(ACCESS_LINE.match(line) for line in lines), lines
    # A control character has no place in a target: 400.
    assert all('"GET /x\\x1b[2J\\x07 HTTP/1.1" 400 ' in line for line in lines[:2]), lines
    assert all('"GET /x\\x22quoted\\x22\\x5c HTTP/1.1" 404 ' in line for line in lines[2:]), lines


def framing_app() -> Flask:
    """``POST /echo`` answers the body it read; ``GET /after`` says it was served."""
    app = Flask(__name__)

    @app.post("/echo")
    def echo() -> bytes:
        return b"echo:" + request.get_data()

    @app.get("/after")
    def after() -> str:
        return "served"

    return app


PIPELINED = b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("fields", "body", "status"),
    [
        (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n", b"400"),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n", b"400"),
        (b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!", b"400"),
        (b"Content-Length: 5, 6\r\n", b"hello!", b"400"),
        (b"Content-Length: +5\r\n", b"hello", b"400"),
        (b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n", b"400"),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n", b"400"),
        (b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n", b"501"),
        (b"Content-Length : 5\r\n", b"hello", b"400"),
        (b"Content-Length: 5\r\n folded: 1\r\n", b"hello", b"400"),
        (b"Content-Length\r\n", b"", b"400"),
    ],
    ids=[
        "CL-then-TE",
        "TE-then-CL",
        "two-CLs",
        "CL-list",
        "CL-signed",
        "chunked-not-final",
        "chunked-twice",
        "unknown-coding",
        "space-before-colon",
        "folded-line",
        "no-colon",
    ],
)
def test_a_request_of_doubtful_length_is_refused_and_nothing_after_it_served(
    serve: Serve, fields: bytes, body: bytes, status: bytes
) -> None:
    port = int(serve(framing_app()).split(":")[1])
    response = send_raw(
        port, b"POST /echo HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n" + body + PIPELINED
    )
    assert response.startswith(b"HTTP/1.1 " + status + b" "), response
    assert response.count(b"HTTP/1.1 ") == 1 and b"served" not in response, response


def test_chunked_and_repeated_equal_lengths_are_still_served(serve: Serve) -> None:
    port = int(serve(framing_app()).split(":")[1])
    requests = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
    )
    response = send_raw(
        port, requests + PIPELINED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    )
    assert response.count(b"HTTP/1.1 200 ") == 3, response
    assert b"echo:hello" in response and b"echo:abc" in response and response.endswith(b"served")


def test_an_http_1_0_handshake_is_refused(serve: Serve) -> None:
    port = int(serve(closing_app).split(":")[1])
    response = send_raw(port, f"GET /ws HTTP/1.0\r\nHost: x\r\n{UPGRADE_FIELDS}\r\n".encode())
    assert response.startswith(b"HTTP/1.1 400 "), response
    assert response.endswith(b"a WebSocket handshake needs HTTP/1.1\n")


@pytest.mark.parametrize("count", [99, 100, 1000])
@pytest.mark.parametrize("pieces", [1, 3], ids=["whole", "in-pieces"])
def test_the_header_count_limit_answers_the_same_however_the_head_arrives(
    serve: Serve, count: int, pieces: int
) -> None:
    port = int(serve(closing_app).split(":")[1])
    fields = "".join(f"X-{n}: {n}\r\n" for n in range(count - 5))  # the handshake has 5 more
    head = f"GET /ws HTTP/1.1\r\nHost: x\r\n{fields}{UPGRADE_FIELDS}\r\n".encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    try:
        step = -(-len(head) // pieces)
        with contextlib.suppress(BrokenPipeError):  # refused before the last piece
            for start in range(0, len(head), step):
                sock.sendall(head[start : start + step])
                gevent.sleep(0.05)
        assert sock.recv(12) == (b"HTTP/1.1 101" if count <= 99 else b"HTTP/1.1 431")
    finally:
        sock.close()


@pytest.mark.parametrize("spawn", [None, 10], ids=["own-handlers", "pool"])
def test_the_handshake_timeout_runs_from_accept_however_late_the_first_bytes(
    spawn: int | None,
) -> None:
    timeout = 1.0 * TIMEOUT_FACTOR
    pool = {} if spawn is None else {"spawn": Pool(spawn)}
    server = Server(("127.0.0.1", 0), closing_app, handshake_timeout=timeout, log=None, **pool)
    server.start()
    try:
        started = time.monotonic()
        slow = socket.create_connection(("127.0.0.1", server.address[1]), timeout=WAIT)
        gevent.sleep(timeout * 0.7)
        slow.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        with gevent.Timeout(WAIT):
            assert slow.recv(100) == b""
        elapsed = time.monotonic() - started
        slow.close()
    finally:
        server.shutdown(timeout=1)
    # Not 1.7 timeouts: the handshake timeout again from the first bytes.
    assert timeout * 0.9 < elapsed < timeout * 1.35, elapsed


def test_a_close_handler_blocking_past_the_deadline_still_lets_its_client_get_1001() -> None:
    app = Flask(__name__)
    endpoint = WebSocket(app, "/ws")
    closing = Event()

    @endpoint.on("close")
    def close() -> None:
        closing.set()
        gevent.sleep(60)  # at shutdown, and past its deadline

    server = Server(("127.0.0.1", 0), app, log=None)
    server.start()
    client = RawClient(f"127.0.0.1:{server.address[1]}", "/ws")
    try:
        stopper = gevent.spawn(server.shutdown, 0.5)
        assert closing.wait(WAIT)
        close = client.recv_close()
        assert (close.code, close.reason) == (1001, "server shutting down")
        assert client.at_eof()
        stopper.join(WAIT)
        assert stopper.successful(), stopper.exception
    finally:
        client.close()
        server.shutdown(timeout=0.1)


OUT_OF_FDS = """
import resource
from gevent import monkey
monkey.patch_all()
import geo_ws
from tests.live_apps.closing import app
resource.setrlimit(resource.RLIMIT_NOFILE, (48, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
geo_ws.run(app, port=0)
"""


def test_running_out_of_descriptors_gives_one_warning_per_burst_then_recovers() -> None:
    with ServerProcess("-c", OUT_OF_FDS) as server:
        host, port = server.wait_serving()
        # More connections than descriptors: accept() fails until some close.
        crowd = [socket.create_connection((host, port), timeout=WAIT) for _ in range(80)]
        try:
            server.stderr.wait_for(re.compile(r"cannot accept connections: .*\(EMFILE\)"), WAIT)
            gevent.sleep(1.5)  # gevent's accept loop retries meanwhile, several times
        finally:
            for sock in crowd:
                sock.close()
        server.stderr.wait_for(re.compile(r"accepting connections again"), WAIT)
        client = RawClient(f"{host}:{port}", "/ws")
        assert client.recv() == "welcome"
        client.close()
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait(timeout=WAIT) == 0
    lines = server.stderr.finish()
    assert sum("cannot accept connections" in line for line in lines) == 1, lines
    assert not any("Traceback" in line or "Too many open files" in line for line in lines), lines


def response_fields(response: bytes) -> list[tuple[str, str]]:
    """The header fields of a raw response, names in lower case."""
    head = response.partition(b"\r\n\r\n")[0].decode("latin-1")
    fields = [line.partition(":") for line in head.split("\r\n")[1:]]
    return [(name.strip().lower(), value.strip()) for name, _, value in fields]


def test_the_426_to_a_plain_get_names_the_upgrade_in_one_connection_header(serve: Serve) -> None:
    port = int(serve(closing_app).split(":")[1])
    response = send_raw(port, b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 426 "), response
    fields = response_fields(response)
    assert [value for name, value in fields if name == "connection"] == ["Upgrade"], fields
    assert ("upgrade", "websocket") in fields


def test_under_werkzeugs_dev_server_the_426_has_one_connection_header_too() -> None:
    # `flask run`: Werkzeug writes "Connection: close" after whatever the app sent.
    from werkzeug.serving import make_server

    dev_server = make_server("127.0.0.1", 0, closing_app)
    serving = gevent.spawn(dev_server.serve_forever, 0.05)
    try:
        response = send_raw(dev_server.port, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        dev_server.shutdown()
        serving.join(WAIT)
        dev_server.server_close()
    assert response.split(b" ", 2)[1] == b"426", response
    fields = response_fields(response)
    assert [name for name, _ in fields].count("connection") == 1, fields
    assert ("upgrade", "websocket") in fields


def test_a_client_refused_with_an_html_page_gets_its_status_line_and_text(serve: Serve) -> None:
    from flask import abort

    from geo_ws.client import connect as geo_ws_connect
    from geo_ws.exceptions import HandshakeError

    app = Flask(__name__)
    endpoint = WebSocket(app, "/ws")

    @app.before_request
    def login_required() -> None:
        abort(401)  # Flask's HTML error page

    assert endpoint is not None
    with pytest.raises(HandshakeError) as info:
        geo_ws_connect(f"ws://{serve(app)}/ws", timeout=WAIT)
    message = str(info.value)
    assert message.startswith("HTTP 401 Unauthorized: 401 Unauthorized Unauthorized The server")
    assert "<" not in message and len(info.value.reason) <= 200


LATE_PATCH = """
from flask import Flask
from gevent import monkey
monkey.patch_all()
import geo_ws
geo_ws.run(Flask("late"), port=0)
"""


def test_patching_after_importing_flask_is_reported_with_what_to_do() -> None:
    with ServerProcess("-c", LATE_PATCH) as late, closing_server() as early:
        for server in (late, early):
            server.wait_serving()
            server.proc.send_signal(signal.SIGTERM)
            assert server.wait(timeout=10) == 0
    late_text, early_text = ("\n".join(server.stderr.finish()) for server in (late, early))
    assert "monkey-patched too late" in late_text and "werkzeug" in late_text, late_text
    assert "from gevent import monkey\n    monkey.patch_all()" in late_text
    assert "Exception ignored" not in late_text and "Traceback" not in late_text, late_text
    # `geo-ws run` patches first: nothing to report.
    assert "too late" not in early_text and "Exception ignored" not in early_text, early_text
