"""Robyn's WebSocket API on Flask (geo_ws.flask.endpoint), over real sockets."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time

import gevent
import pytest
import websocket as wsclient
from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    g,
    request,
    session,
)
from gevent.event import Event
from gevent.monkey import get_original

from geo_ws import ConnectionClosed, WebSocket, run_blocking
from geo_ws.protocol.frames import Opcode
from geo_ws.protocol.machine import Message, Ping, Pong

from ..helpers import WAIT, RawClient, connect, http_get

# -- registration -----------------------------------------------------------------------


class TestRegistration:
    def test_on_returns_the_function_unchanged(self, app: Flask) -> None:
        websocket = WebSocket(app, "/ws")

        def handler(ws, msg):
            return msg

        assert websocket.on("message")(handler) is handler

    def test_unknown_event_is_a_value_error_naming_the_three(self, app: Flask) -> None:
        websocket = WebSocket(app, "/ws")
        with pytest.raises(ValueError) as error:
            websocket.on("open")
        for name in ("connect", "message", "close"):
            assert name in str(error.value)

    def test_unknown_parameter_is_a_type_error_naming_the_allowed(self, app: Flask) -> None:
        websocket = WebSocket(app, "/ws")
        with pytest.raises(TypeError) as error:

            @websocket.on("message")
            def handler(ws, message):
                return message

        assert "message" in str(error.value)
        for name in ("ws", "msg", "global_dependencies", "router_dependencies"):
            assert name in str(error.value)

    def test_registering_again_replaces(self, app: Flask, serve) -> None:
        websocket = WebSocket(app, "/ws")
        websocket.on("message")(lambda: "first")
        websocket.on("message")(lambda: "second")
        client = connect(serve(app), "/ws")
        client.send("x")
        assert client.recv() == "second"

    def test_every_handler_is_optional(self, app: Flask, serve) -> None:
        WebSocket(app, "/ws")
        client = RawClient(serve(app), "/ws")
        assert client.status == 101
        client.send_text("nobody listens")
        client.send_close(1000)
        assert client.recv_close().code == 1000


# -- injection and messages -------------------------------------------------------------


def test_parameters_are_injected_by_name_in_any_order(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")
    websocket.inject(db="router-db")
    websocket.inject_global(cache="global-cache")

    @websocket.on("message")
    def message(router_dependencies, msg, global_dependencies, ws):
        return {
            "msg": msg,
            "router": router_dependencies["db"],
            "global": global_dependencies["cache"],
            "id": ws.id,
        }

    @websocket.on("connect")
    def connect_(msg):
        return f"connect msg={msg!r}"

    client = connect(serve(app), "/ws")
    assert client.recv() == "connect msg=''"
    client.send("hello")
    got = json.loads(client.recv())
    assert (
        got["msg"] == "hello" and got["router"] == "router-db" and got["global"] == "global-cache"
    )
    assert isinstance(got["id"], str) and got["id"]


def test_msg_is_str_for_text_and_bytes_for_binary(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")

    @websocket.on("message")
    def message(msg):
        return f"{type(msg).__name__}:{len(msg)}"

    client = connect(serve(app), "/ws")
    client.send("héllo")
    assert client.recv() == "str:5"
    client.send_binary(b"\x00\x01\x02")
    assert client.recv() == "bytes:3"


def test_later_injections_are_visible(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")

    @websocket.on("message")
    def message(router_dependencies, global_dependencies):
        return [router_dependencies.get("late"), global_dependencies.get("late")]

    client = connect(serve(app), "/ws")
    client.send("x")
    assert json.loads(client.recv()) == [None, None]
    websocket.inject(late="router")
    websocket.inject_global(late="global")
    client.send("x")
    assert json.loads(client.recv()) == ["router", "global"]


def test_global_dependencies_are_shared_by_the_app_endpoints(app: Flask, serve) -> None:
    first = WebSocket(app, "/first")
    second = WebSocket(app, "/second")
    first.inject_global(shared="yes")
    first.inject(only="first")

    @second.on("message")
    def message(global_dependencies, router_dependencies):
        return [global_dependencies.get("shared"), router_dependencies.get("only")]

    client = connect(serve(app), "/second")
    client.send("x")
    assert json.loads(client.recv()) == ["yes", None]


@pytest.mark.parametrize(
    ("returned", "opcode", "payload"),
    [
        ("text", Opcode.TEXT, "text"),
        ("", Opcode.TEXT, ""),
        (b"\x00bin", Opcode.BINARY, b"\x00bin"),
        (bytearray(b"ba"), Opcode.BINARY, b"ba"),
        (memoryview(b"mv"), Opcode.BINARY, b"mv"),
        ({"a": 1}, Opcode.TEXT, '{"a":1}'),
        ([1, "two"], Opcode.TEXT, '[1,"two"]'),
    ],
)
def test_return_values_are_sent(app: Flask, serve, returned, opcode, payload) -> None:
    websocket = WebSocket(app, "/ws")
    websocket.on("message")(lambda: returned)
    client = connect(serve(app), "/ws")
    client.send("x")
    got_opcode, data = client.recv_data()
    assert got_opcode == opcode
    expected = payload.encode() if isinstance(payload, str) else payload
    assert data.replace(b" ", b"") == expected


def test_none_sends_nothing(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")

    @websocket.on("message")
    def message(msg):
        return None if msg == "quiet" else "loud"

    client = connect(serve(app), "/ws")
    client.send("quiet")
    client.send("again")
    assert client.recv() == "loud"


def test_a_bad_return_type_is_logged_and_closes_with_1011(app: Flask, serve, caplog) -> None:
    websocket = WebSocket(app, "/ws")
    websocket.on("message")(lambda: 42)
    client = RawClient(serve(app), "/ws")
    with caplog.at_level(logging.ERROR, logger="geo_ws"):
        client.send_text("x")
        assert client.recv_close().code == 1011
    assert any("TypeError" in (record.exc_text or "") for record in caplog.records)


def test_a_handler_error_closes_that_client_with_1011_and_others_go_on(
    app: Flask, serve, caplog
) -> None:
    websocket = WebSocket(app, "/ws")

    @websocket.on("message")
    def message(msg):
        if msg == "boom":
            raise RuntimeError("kaboom")
        return msg

    address = serve(app)
    healthy = connect(address, "/ws")
    failing = RawClient(address, "/ws")
    with caplog.at_level(logging.ERROR, logger="geo_ws"):
        failing.send_text("boom")
        close = failing.recv_close()
    assert close.code == 1011
    assert "kaboom" in caplog.text and "Traceback" in caplog.text
    healthy.send("still here")
    assert healthy.recv() == "still here"
    assert http_get(address, "/nothing")[0] == 404  # the server itself goes on


def test_a_connection_closed_raised_by_the_handler_itself_is_an_error(
    app: Flask, serve, caplog
) -> None:
    """Only ws.receive()'s own ConnectionClosed (this client left) is quiet; one from
    another connection the handler uses is a failure like any other."""
    websocket = WebSocket(app, "/ws")

    @websocket.on("message")
    def message(msg):
        raise ConnectionClosed(1000, "some other connection")

    client = RawClient(serve(app), "/ws")
    with caplog.at_level(logging.ERROR, logger="geo_ws"):
        client.send_text("x")
        close = client.recv_close()
    assert close.code == 1011
    assert "some other connection" in caplog.text


# -- identity and request data ----------------------------------------------------------


def test_request_data_of_the_handshake(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/rooms/<room>/<int:seat>")

    @websocket.on("connect")
    def connect_(ws):
        return {
            "path": ws.path_params,
            "query": ws.query_params.to_dict(),
            "header": ws.headers.get("X-Token"),
            "addr": ws.remote_addr,
        }

    client = connect(serve(app), "/rooms/lobby/7?a=1&a=2&b=&c=x%20y", header=["X-Token: t0k"])
    got = json.loads(client.recv())
    assert got["path"] == {"room": "lobby", "seat": 7}
    assert got["query"] == {"a": ["1", "2"], "b": [""], "c": ["x y"]}
    assert got["header"] == "t0k"
    assert got["addr"] == "127.0.0.1"


def test_ids_are_unique_and_send_to_reaches_another_client(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")
    websocket.on("connect")(lambda ws: ws.id)

    @websocket.on("message")
    def message(ws, msg):
        target, _, text = msg.partition(" ")
        ws.sync_send_to(target, text)

    address = serve(app)
    alice, bob = connect(address, "/ws"), connect(address, "/ws")
    alice_id, bob_id = alice.recv(), bob.recv()
    assert alice_id != bob_id
    alice.send(f"{bob_id} hello bob")
    assert bob.recv() == "hello bob"
    alice.send("nobody.1 lost")  # an unknown id is a no-op, not an error
    alice.send(f"{alice_id} to myself")
    assert alice.recv() == "to myself"


def test_broadcast_reaches_every_client_of_the_endpoint_only(app: Flask, serve) -> None:
    room = WebSocket(app, "/room")
    other = WebSocket(app, "/other")

    @room.on("message")
    def message(ws, msg):
        assert ws.sync_broadcast(msg) == 3

    other.on("connect")(lambda: "other")
    address = serve(app)
    clients = [connect(address, "/room") for _ in range(3)]
    outsider = connect(address, "/other")
    assert outsider.recv() == "other"
    clients[0].send("to all")
    assert [client.recv() for client in clients] == ["to all"] * 3
    outsider.settimeout(0.2)
    with pytest.raises(wsclient.WebSocketTimeoutException):
        outsider.recv()


def test_async_send_and_broadcast(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")

    @websocket.on("message")
    async def message(ws, msg):
        await asyncio.sleep(0.01)
        await ws.async_send_to(ws.id, "to me")
        await ws.async_broadcast("to all")
        return "done"

    address = serve(app)
    first, second = connect(address, "/ws"), connect(address, "/ws")
    first.send("x")
    assert [first.recv(), first.recv(), first.recv()] == ["to me", "to all", "done"]
    assert second.recv() == "to all"


def test_endpoint_sends_from_a_view_and_a_background_greenlet(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")
    websocket.on("connect")(lambda ws: ws.id)

    @app.post("/notify/<connection_id>")
    def notify(connection_id: str) -> str:
        websocket.sync_send_to(connection_id, "from a view")
        websocket.sync_broadcast("broadcast from a view")
        return "ok"

    address = serve(app)
    client = connect(address, "/ws")
    client_id = client.recv()
    import urllib.request

    urllib.request.urlopen(
        urllib.request.Request(f"http://{address}/notify/{client_id}", method="POST"), timeout=WAIT
    ).read()
    assert client.recv() == "from a view"
    assert client.recv() == "broadcast from a view"
    # No app context in a plain greenlet: the endpoint's only app is used.
    gevent.spawn(websocket.sync_broadcast, "from a greenlet").join(WAIT)
    assert client.recv() == "from a greenlet"
    gevent.spawn(asyncio.run, websocket.async_send_to(client_id, "async")).join(WAIT)
    assert client.recv() == "async"


# -- closing ----------------------------------------------------------------------------


def test_close_in_a_handler_sends_its_return_value_then_close_1000(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")

    @websocket.on("message")
    def message(ws):
        ws.close()
        return "Closing connection"

    client = RawClient(serve(app), "/ws")
    client.send_text("bye")
    assert client.recv() == "Closing connection"
    close = client.recv_close()
    assert close.code == 1000
    client.send_close(1000)
    assert client.at_eof()


def test_close_with_a_code_and_reason_from_an_async_handler(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")

    @websocket.on("message")
    async def message(ws):
        ws.close(4001, "custom")
        return "last words"

    client = RawClient(serve(app), "/ws")
    client.send_text("x")
    assert client.recv() == "last words"
    close = client.recv_close()
    assert (close.code, close.reason) == (4001, "custom")


def test_close_from_elsewhere_acts_at_once_and_unregisters(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")
    clients: dict[str, object] = {}

    @websocket.on("connect")
    def connect_(ws):
        clients[ws.id] = ws
        return ws.id

    @websocket.on("close")
    def closed(ws):
        return "bye"

    @app.post("/kick/<connection_id>")
    def kick(connection_id: str) -> str:
        clients[connection_id].close(4000, "kicked")
        websocket.sync_broadcast("after the kick")
        return "ok"

    address = serve(app)
    victim = RawClient(address, "/ws")
    victim_id = victim.recv()
    witness = connect(address, "/ws")
    witness.recv()
    import urllib.request

    urllib.request.urlopen(
        urllib.request.Request(f"http://{address}/kick/{victim_id}", method="POST"), timeout=WAIT
    ).read()
    assert witness.recv() == "after the kick"
    # The close handler's value, then the Close; the later broadcast never reached it.
    assert victim.recv() == "bye"
    close = victim.recv_close()
    assert (close.code, close.reason) == (4000, "kicked")
    assert websocket.connection_ids() == [
        clients_id for clients_id in clients if clients_id != victim_id
    ]


def test_endpoint_close_by_id(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")
    websocket.on("connect")(lambda ws: ws.id)
    client = RawClient(serve(app), "/ws")
    client_id = client.recv()
    assert websocket.close(client_id, 4002, "by id")
    assert client.recv_close().code == 4002
    assert not websocket.close(client_id)


def test_the_close_handler_answers_the_client_close_before_the_server_close(
    app: Flask, serve
) -> None:
    websocket = WebSocket(app, "/ws")
    websocket.on("close")(lambda: "Goodbye")
    client = RawClient(serve(app), "/ws")
    client.send_close(4010, "leaving")
    assert client.recv() == "Goodbye"
    close = client.recv_close()
    assert close.code == 4010  # the server echoes the client's code
    assert client.at_eof()


@pytest.mark.parametrize("ending", ["client close", "ws.close", "error", "tcp drop", "shutdown"])
def test_the_close_handler_runs_exactly_once_however_it_ends(app: Flask, ending: str) -> None:
    from geo_ws.server.builtin import Server

    websocket = WebSocket(app, "/ws")
    calls: list[str] = []
    ran = Event()

    @websocket.on("message")
    def message(ws, msg):
        if msg == "close":
            ws.close()
        if msg == "error":
            raise ValueError("on purpose")
        return "ok"

    @websocket.on("close")
    def closed(ws):
        calls.append(ws.id)
        ran.set()
        return "bye"

    server = Server(("127.0.0.1", 0), app, log=None)
    server.start()
    try:
        client = RawClient(f"127.0.0.1:{server.address[1]}", "/ws")
        if ending == "client close":
            client.send_close(1000)
        elif ending == "ws.close":
            client.send_text("close")
        elif ending == "error":
            client.send_text("error")
        elif ending == "tcp drop":
            client.close()
        if ending == "shutdown":
            gevent.spawn(server.shutdown, 2)
            assert client.recv() == "bye"
            assert client.recv_close().code == 1001
            client.send_close(1001)
        assert ran.wait(WAIT)
        gevent.sleep(0.1)  # a second run would follow at once
        assert len(calls) == 1
    finally:
        server.shutdown(timeout=1)


def test_a_closed_client_gets_nothing_more(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")

    @websocket.on("message")
    def message(ws, msg):
        ws.close()
        ws.sync_broadcast("after close")  # already unregistered: not for this client
        return "last"

    client = RawClient(serve(app), "/ws")
    client.send_text("x")
    assert client.recv() == "last"
    assert client.recv_close().code == 1000


def test_async_handlers_do_not_block_other_clients(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")

    @websocket.on("message")
    async def message(msg):
        if msg == "slow":
            await asyncio.sleep(1)
        return msg

    address = serve(app)
    slow, fast = connect(address, "/ws"), connect(address, "/ws")
    slow.send("slow")
    gevent.sleep(0.05)
    started = time.monotonic()
    fast.send("fast")
    assert fast.recv() == "fast"
    assert time.monotonic() - started < 0.1
    assert slow.recv() == "slow"


def test_a_blocking_sync_handler_does_not_block_other_clients(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")
    blocking_sleep = get_original("time", "sleep")

    @websocket.on("message")
    def message(msg):
        if msg == "patched":
            time.sleep(1)  # monkey-patched: cooperative
        elif msg == "native":
            run_blocking(blocking_sleep, 1)  # not cooperative: moved to the threadpool
        return msg

    address = serve(app)
    for kind in ("patched", "native"):
        slow, fast = connect(address, "/ws"), connect(address, "/ws")
        slow.send(kind)
        gevent.sleep(0.05)
        worst = 0.0
        for _ in range(5):
            started = time.monotonic()
            fast.send("ping")
            assert fast.recv() == "ping"
            worst = max(worst, time.monotonic() - started)
        assert worst < 0.1, (kind, worst)
        assert slow.recv() == kind


# -- Flask integration ------------------------------------------------------------------


def test_flask_request_g_session_and_current_app_work_in_handlers(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")

    @app.get("/login")
    def login() -> str:
        session["user"] = "alice"
        return "ok"

    @websocket.on("connect")
    def connect_():
        g.counter = 0

    @websocket.on("message")
    async def message(msg):
        g.counter += 1
        return [request.args.get("room"), session.get("user"), current_app.name, g.counter]

    address = serve(app)
    import urllib.request

    with urllib.request.urlopen(f"http://{address}/login", timeout=WAIT) as response:
        cookie = response.headers["Set-Cookie"].split(";")[0]
    client = connect(address, "/ws?room=blue", cookie=cookie)
    client.send("x")
    assert json.loads(client.recv()) == ["blue", "alice", app.name, 1]
    client.send("x")
    assert json.loads(client.recv())[3] == 2


def test_the_request_teardown_runs_when_the_connection_ends(app: Flask, serve) -> None:
    # Between messages the connection waits without its request's greenlet; its request
    # context lives on and is torn down once, after the close handler.
    websocket = WebSocket(app, "/ws")
    events: list[str] = []
    torn_down = Event()

    @app.teardown_request
    def teardown(error: BaseException | None) -> None:
        events.append("teardown")
        torn_down.set()

    @websocket.on("message")
    def message(msg):
        gevent.sleep(0)  # a handler that blocks, on a worker greenlet
        return request.path + " " + msg

    @websocket.on("close")
    def closed():
        events.append("close " + request.path)

    client = connect(serve(app), "/ws")
    for text in ("a", "b"):
        client.send(text)
        assert client.recv() == "/ws " + text
    assert events == []
    client.close()
    assert torn_down.wait(WAIT)
    assert events == ["close /ws", "teardown"]


def test_idle_connections_hold_no_greenlet(app: Flask, serve) -> None:
    import gc

    from greenlet import greenlet

    websocket = WebSocket(app, "/ws")
    websocket.on("message")(lambda msg: msg)
    address = serve(app)

    def running() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, greenlet) and o)

    before = running()
    clients = [connect(address, "/ws") for _ in range(20)]
    for client in clients:
        client.send("x")
        assert client.recv() == "x"
    assert len(websocket.connection_ids()) == 20
    assert running() - before < 5


def test_before_request_can_refuse_the_handshake(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")
    websocket.on("connect")(lambda: "welcome")

    @app.before_request
    def check_token() -> None:
        if request.args.get("token") != "secret":
            abort(401)

    address = serve(app)
    refused = RawClient(address, "/ws")
    assert refused.status == 401
    assert connect(address, "/ws?token=secret").recv() == "welcome"


def test_http_route_and_websocket_share_a_path(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/feed")
    websocket.on("connect")(lambda: "websocket")
    app.add_url_rule("/feed", "feed_page", lambda: "http page")
    address = serve(app)
    assert http_get(address, "/feed") == (200, "http page")
    assert connect(address, "/feed").recv() == "websocket"


def test_handshake_errors(app: Flask, serve) -> None:
    WebSocket(app, "/ws")
    app.add_url_rule("/page", "page", lambda: "page")
    address = serve(app)
    assert RawClient(address, "/nowhere").status == 404
    assert RawClient(address, "/page").status == 404  # a handshake on an HTTP-only path
    status, body = http_get(address, "/ws")  # a plain GET on a WebSocket-only path
    assert status == 426 and "WebSocket" in body
    assert RawClient(address, "/ws", {"Sec-WebSocket-Version": "8"}).status in (400, 426)


def test_a_blueprint_prefix_applies_and_each_app_has_its_own_registry(serve) -> None:
    blueprint = Blueprint("rooms", __name__, url_prefix="/api")
    websocket = WebSocket(blueprint, "/rooms/<room>")

    @websocket.on("message")
    def message(ws, msg, global_dependencies):
        ws.sync_broadcast(f"{ws.path_params['room']}:{msg}:{global_dependencies.get('name')}")

    first, second = Flask("first"), Flask("second")
    first.register_blueprint(blueprint)
    second.register_blueprint(blueprint)
    websocket.inject_global(name="both")
    first_address, second_address = serve(first), serve(second)
    one = connect(first_address, "/api/rooms/red")
    two = connect(second_address, "/api/rooms/red")
    one.send("hi")
    assert one.recv() == "red:hi:both"
    two.settimeout(0.2)
    with pytest.raises(wsclient.WebSocketTimeoutException):
        two.recv()  # the other app's clients are not in this app's registry
    with pytest.raises(RuntimeError, match="several apps"):
        websocket.sync_broadcast("which app?")
    with first.app_context():
        assert websocket.sync_broadcast("first only") == 1
    assert one.recv() == "first only"


# -- the connection ---------------------------------------------------------------------


def test_a_message_above_max_message_size_closes_with_1009(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws", max_message_size=1000)
    websocket.on("message")(lambda msg: f"got {len(msg)}")
    client = RawClient(serve(app), "/ws")
    client.send_text("a" * 1000)
    assert client.recv() == "got 1000"
    client.send_text("a" * 1001)
    close = client.recv_close()
    assert close.code == 1009 and "1000" in close.reason


def test_pings_are_answered_and_fragments_reassembled(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")
    websocket.on("message")(lambda msg: msg)
    client = RawClient(serve(app), "/ws")
    client.send_frame(Opcode.TEXT, b"frag", fin=False)
    client.send_frame(Opcode.PING, b"are you there")
    client.send_frame(Opcode.CONT, b"ments", fin=True)
    assert client.recv_event() == Pong(b"are you there")
    assert client.recv_event() == Message("fragments")


def test_concurrent_senders_never_interleave_frames(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")
    size, count = 1 << 20, 3

    @websocket.on("message")
    def message(ws):
        def sender(tag: int) -> None:
            for seq in range(count):
                ws.sync_send_to(ws.id, bytes([tag]) * size)
                ws.sync_send_to(ws.id, f"{tag}:{seq}")
                gevent.sleep(0)

        gevent.joinall([gevent.spawn(sender, tag) for tag in range(3)])

    client = connect(serve(app), "/ws")
    client.send("go")
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for _ in range(3 * count * 2):
        data = client.recv()
        if isinstance(data, bytes):
            assert len(data) == size and data == data[:1] * size
        else:
            tag, seq = map(int, data.split(":"))
            seen[tag].append(seq)
    assert seen == {tag: list(range(count)) for tag in range(3)}  # in order per sender


def test_a_client_that_stops_reading_is_closed_with_1008_and_blocks_nobody(
    app: Flask, serve, caplog
) -> None:
    websocket = WebSocket(app, "/ws", max_outbox_size=256 * 1024, close_timeout=5)
    chunk = b"x" * 65536

    @websocket.on("message")
    def message(ws, msg):
        if msg == "flood":
            for _ in range(200):  # 12.5 MiB, far beyond socket buffers and the outbox
                ws.sync_broadcast(chunk)
                gevent.sleep(0.001)  # lets the test read the fast client meanwhile
            return None
        return msg

    address = serve(app)
    stalled = RawClient(address, "/ws")
    fast = connect(address, "/ws")
    with caplog.at_level(logging.WARNING, logger="geo_ws"):
        started = time.monotonic()
        fast.send("flood")
        fast.settimeout(WAIT)
        received = 0
        while received < 200:  # the fast client gets every broadcast
            opcode, data = fast.recv_data()
            assert opcode == Opcode.BINARY and data == chunk
            received += 1
        assert time.monotonic() - started < WAIT
        close = None
        while close is None:  # the stalled one gets what fitted, then Close 1008
            event = stalled.recv_event()
            if not isinstance(event, Message):
                close = event
    assert close.code == 1008
    assert "outbox" in caplog.text
    fast.send("alive")
    assert fast.recv() == "alive"


def test_view_decorators_run_before_the_handshake(app: Flask, serve) -> None:
    def require_token(view):
        @functools.wraps(view)
        def wrapper(**kwargs):
            if request.headers.get("X-Token") != "secret":
                abort(403)
            return view(**kwargs)

        return wrapper

    websocket = WebSocket(app, "/ws", decorators=[require_token])
    websocket.on("connect")(lambda: "in")
    address = serve(app)
    assert RawClient(address, "/ws").status == 403
    assert RawClient(address, "/ws", {"X-Token": "secret"}).recv() == "in"


@pytest.mark.parametrize("code", [999, 1005, 1006, 1015, 2999, 5000])
def test_close_refuses_codes_that_may_not_be_sent(app: Flask, serve, code: int) -> None:
    websocket = WebSocket(app, "/ws")
    errors: list[str] = []

    @websocket.on("message")
    def message(ws):
        try:
            ws.close(code)
        except ValueError as error:
            errors.append(str(error))
        return "still open"

    client = connect(serve(app), "/ws")
    client.send("x")
    assert client.recv() == "still open"
    assert errors and str(code) in errors[0]
    client.send("x")
    assert client.recv() == "still open"  # neither closed nor unregistered


# -- handshake options and keepalive ----------------------------------------------------


def test_allowed_origins(app: Flask, serve) -> None:
    WebSocket(app, "/strict", allowed_origins=["https://good.example"])
    WebSocket(app, "/lenient", allowed_origins=["https://good.example", None])
    address = serve(app)
    assert RawClient(address, "/strict", {"Origin": "https://good.example"}).status == 101
    assert RawClient(address, "/strict", {"Origin": "https://evil.example"}).status == 403
    assert RawClient(address, "/strict").status == 403
    assert RawClient(address, "/lenient").status == 101


def test_subprotocols_are_negotiated_by_server_preference(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws", subprotocols=["v2.chat", "v1.chat"])
    websocket.on("connect")(lambda ws: str(ws.subprotocol))
    address = serve(app)
    client = connect(address, "/ws", subprotocols=["v1.chat", "v2.chat"])
    assert client.recv() == "v2.chat"
    assert client.getsubprotocol() == "v2.chat"
    # None offered that the endpoint speaks: the handshake goes on without one.
    other = RawClient(address, "/ws", {"Sec-WebSocket-Protocol": "other"})
    assert other.recv() == "None"
    assert "sec-websocket-protocol" not in other.response_head.lower()
    assert connect(address, "/ws").recv() == "None"


def test_max_connections_answers_503_beyond_the_limit(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws", max_connections=2)
    websocket.on("connect")(lambda: "in")
    address = serve(app)
    first, second = RawClient(address, "/ws"), RawClient(address, "/ws")
    assert first.recv() == second.recv() == "in"
    assert RawClient(address, "/ws").status == 503
    first.send_close(1000)
    first.recv_close()
    assert first.at_eof()
    assert RawClient(address, "/ws").recv() == "in"


def test_an_unresponsive_client_is_closed_by_keepalive(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws", ping_interval=0.1, ping_timeout=0.2)
    closed = Event()
    websocket.on("close")(lambda: closed.set())
    client = RawClient(serve(app), "/ws")
    assert isinstance(client.recv_event(), Ping)  # and never answered
    close = client.recv_close()
    assert (close.code, close.reason) == (1011, "keepalive ping timeout")
    assert closed.wait(WAIT)


def test_a_responsive_client_stays_and_latency_is_measured(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws", ping_interval=0.05, ping_timeout=0.2)

    @websocket.on("message")
    def message(ws, msg):
        if msg == "busy":
            time.sleep(0.5)  # longer than ping_timeout: a busy handler is not a dead client
        return repr(ws.latency)

    client = RawClient(serve(app), "/ws")
    pongs = 0
    while pongs < 5:  # answer pings as a client library would
        event = client.recv_event()
        assert isinstance(event, Ping)
        client.send_frame(Opcode.PONG, event.payload)
        pongs += 1
    client.send_text("busy")
    while True:
        event = client.recv_event()
        if isinstance(event, Ping):
            client.send_frame(Opcode.PONG, event.payload)
            continue
        assert isinstance(event, Message)
        break
    latency = float(event.data)
    assert 0 <= latency < 0.1


# -- the blocking-loop style ------------------------------------------------------------


def test_receive_in_a_loop_inside_the_connect_handler(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")
    ended: list[int] = []
    closed = Event()

    @websocket.on("connect")
    def connect_(ws):
        try:
            while True:
                message = ws.receive()
                ws.sync_send_to(ws.id, message.upper())
        except ConnectionClosed as error:
            ended.append(error.code)
            raise

    websocket.on("message")(lambda: "never: the loop takes every message")
    websocket.on("close")(lambda: closed.set())
    client = RawClient(serve(app), "/ws")
    for word in ("one", "two"):
        client.send_text(word)
        assert client.recv() == word.upper()
    client.send_close(4100, "done")
    assert client.recv_close().code == 4100
    assert closed.wait(WAIT)
    assert ended == [4100]


def test_receive_times_out_and_ends_when_closed_from_elsewhere(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")
    outcomes: list[str] = []

    @websocket.on("connect")
    def connect_(ws):
        try:
            ws.receive(timeout=0.05)
        except TimeoutError:
            outcomes.append("timeout")
        ws.sync_send_to(ws.id, ws.id)
        try:
            ws.receive()
        except ConnectionClosed as error:
            outcomes.append(f"closed {error.code}")

    client = RawClient(serve(app), "/ws")
    client_id = client.recv()
    assert websocket.close(client_id, 4200, "from a view")
    assert client.recv_close().code == 4200
    assert outcomes == ["timeout", "closed 4200"]
