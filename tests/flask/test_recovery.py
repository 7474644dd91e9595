"""Resume on an endpoint with ``recovery=``, in one process (the in-memory default):
id and rooms restored, every missed message once and in order, plain clients untouched,
and the close code for each bad first message."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from flask import Flask
from gevent.event import Event

from geo_ws import Recovery, WebSocket
from geo_ws.client import MessagesLost, ResumingConnection, connect
from geo_ws.exceptions import ConnectionClosed
from geo_ws.flask import recovery as recovery_module
from geo_ws.io.backoff import Backoff
from geo_ws.protocol.machine import Close
from geo_ws.protocol.resume import SUBPROTOCOL, Resume, parse_hello
from tests.helpers import WAIT, RawClient
from tests.helpers import connect as plain_connect
from tests.live_apps.proxy import CuttingProxy

MESSAGES = 1000


class Recorder:
    """What the app's handlers saw."""

    def __init__(self) -> None:
        self.connects: list[dict[str, Any]] = []
        self.closes: list[str] = []
        self.connected = Event()
        self.closed = Event()


def make_app(recorder: Recorder, recovery: Any = True) -> tuple[Flask, WebSocket]:
    """An app with a recovery endpoint at /live and a plain one at /plain."""
    app = Flask(__name__)
    live = WebSocket(app, "/live", recovery=recovery)
    plain = WebSocket(app, "/plain")

    @live.on("connect")
    def on_connect(ws: Any) -> None:
        recorder.connects.append(
            {"id": ws.id, "resumed": ws.resumed, "recovered": ws.recovered, "rooms": ws.rooms}
        )
        recorder.connected.set()

    @live.on("close")
    def on_close(ws: Any) -> None:
        recorder.closes.append(ws.id)
        for room in ws.rooms:
            ws.leave(room)  # a no-op for a connection whose id resumed elsewhere
        recorder.closed.set()

    def on_message(ws: Any, msg: str | bytes) -> str | bytes | None:
        if isinstance(msg, bytes):
            return msg
        command, _, argument = msg.partition(" ")
        if command == "join":
            ws.join(argument)
            return f"joined {argument}"
        if command == "stream":
            gevent.spawn(stream, ws, int(argument))
            return None
        if command == "room":
            room, _, text = argument.partition(" ")
            ws.sync_broadcast(text, room=room)
            return None
        return f"echo {msg}"

    def stream(ws: Any, count: int) -> None:
        for i in range(count):
            ws.sync_broadcast(str(i))
            if i % 10 == 0:
                gevent.sleep(0.001)  # a stream over time: the cut falls in its middle
        ws.sync_broadcast("end")

    live.on("message")(on_message)
    plain.on("message")(on_message)

    loop = WebSocket(app, "/loop", recovery=recovery)

    @loop.on("connect")
    def blocking_loop(ws: Any) -> None:
        ws.sync_send_to(ws.id, "in the loop")  # held until the loop first receives
        while True:
            ws.sync_send_to(ws.id, ws.receive().upper())

    return app, live


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def address(serve: Callable[[Flask], str], recorder: Recorder) -> str:
    return serve(make_app(recorder)[0])


@pytest.fixture
def proxy(address: str) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(address)
    yield proxy
    proxy.stop()


def resuming(address: str, **options: Any) -> ResumingConnection:
    return ResumingConnection(
        f"ws://{address}/live", timeout=WAIT, backoff=Backoff(0.05, 0.2), **options
    )


def receive_until(client: ResumingConnection, last: str) -> list[str | bytes]:
    """Every message up to ``last``."""
    received: list[str | bytes] = []
    while not received or received[-1] != last:
        received.append(client.recv(timeout=WAIT))
    return received


def test_a_resuming_client_gets_messages_without_their_offsets(address: str) -> None:
    with connect(f"ws://{address}/live", resume=True, timeout=WAIT) as client:
        assert client.id is not None
        assert (client.resumed, client.recovered) == (False, False)
        client.send("hi")
        assert client.recv(timeout=WAIT) == "echo hi"
        client.send(b"bytes")
        assert client.recv(timeout=WAIT) == b"bytes"


def test_a_connect_handler_that_loops_goes_live_when_it_first_receives(address: str) -> None:
    with connect(f"ws://{address}/loop", resume=True, timeout=WAIT) as client:
        client.send("a")
        assert client.recv(timeout=WAIT) == "in the loop"
        assert client.recv(timeout=WAIT) == "A"


def test_a_plain_client_on_a_recovery_endpoint_sees_the_frames_of_a_plain_endpoint(
    address: str,
) -> None:
    seen = {}
    for path in ("/live", "/plain"):
        client = RawClient(address, path)
        assert "Sec-WebSocket-Protocol" not in client.response_head
        client.send_text("hi")
        client.send_text("stream 3")
        seen[path] = [client.recv() for _ in range(5)]
        client.close()
    assert seen["/live"] == seen["/plain"] == ["echo hi", "0", "1", "2", "end"]


def test_a_cut_client_comes_back_with_every_message_once_in_order(
    proxy: CuttingProxy, recorder: Recorder
) -> None:
    with resuming(proxy.address) as client:
        first_id = client.id
        client.send("join blue")
        assert client.recv(timeout=WAIT) == "joined blue"
        client.send(f"stream {MESSAGES}")
        received = [client.recv(timeout=WAIT) for _ in range(100)]
        assert proxy.cut() == 1
        received += receive_until(client, "end")
        assert received == [str(i) for i in range(MESSAGES)] + ["end"]
        assert (client.id, client.resumed, client.recovered) == (first_id, True, True)
        assert client.reconnects == 1
        assert proxy.accepted == 2
    assert recorder.connects[1] == {
        "id": first_id,
        "resumed": True,
        "recovered": True,
        "rooms": frozenset({"blue"}),
    }
    # The drop ran the close handler once, as any drop does (then the close at the end).
    assert recorder.closes[0] == first_id


def test_what_is_replayed_is_what_the_client_would_have_got(
    address: str, proxy: CuttingProxy
) -> None:
    other = plain_connect(address, "/live")
    with resuming(proxy.address) as client:
        client.send("join red")
        assert client.recv(timeout=WAIT) == "joined red"
        proxy.cut(pause=True)
        # While it is away: a room it is not in, a send to another id, its room, its id.
        other.send("room green not-for-it")
        other.send("hi")
        assert other.recv() == "echo hi"
        other.send("room red for-it")
        proxy.paused = False
        assert client.recv(timeout=WAIT) == "for-it"
        client.send("after")
        assert client.recv(timeout=WAIT) == "echo after"
        assert client.recovered


@pytest.mark.parametrize(
    ("recovery", "resumed"),
    [(Recovery(age=0.3), False), (Recovery(size=5), True)],
    ids=["past-the-age", "past-the-size"],
)
def test_a_client_back_too_late_is_told(
    serve: Callable[[Flask], str], recorder: Recorder, recovery: Recovery, resumed: bool
) -> None:
    address = serve(make_app(recorder, recovery)[0])
    proxy = CuttingProxy(address)
    try:
        with resuming(proxy.address) as client:
            first_id = client.id
            client.send("join blue")
            assert client.recv(timeout=WAIT) == "joined blue"
            proxy.cut(pause=True)
            if resumed:  # its session lives, but more was sent than the log keeps
                other = plain_connect(address, "/live")
                other.send("stream 10")
                assert other.recv() == "0"
            else:
                gevent.sleep(0.6)  # the window (0.3 s) passes while it is away
            proxy.paused = False
            with pytest.raises(MessagesLost) as info:
                client.recv(timeout=WAIT)
            hello = info.value.hello
            assert (hello.resumed, hello.recovered, hello.missed) == (resumed, False, None)
            assert (client.resumed, client.recovered) == (resumed, False)
            assert (client.id == first_id) is resumed
            client.send("again")
            assert client.recv(timeout=WAIT) == "echo again"
        again = [seen for seen in recorder.connects if seen["id"] == client.id][-1]
        rooms = frozenset({"blue"}) if resumed else frozenset()
        assert again == {"id": client.id, "resumed": resumed, "recovered": False, "rooms": rooms}
    finally:
        proxy.stop()


def test_an_older_connection_of_the_session_is_closed(address: str, recorder: Recorder) -> None:
    client = resuming(address, reconnect_for=1.0)
    client.send("join blue")
    assert client.recv(timeout=WAIT) == "joined blue"
    session = client._session
    assert session is not None
    raw = RawClient(address, "/live", {"Sec-WebSocket-Protocol": SUBPROTOCOL})
    raw.send_text(Resume(session, client._epoch, client._offset).encode())
    hello = parse_hello(raw.recv())
    assert (hello.id, hello.resumed) == (client.id, True)
    with pytest.raises(ConnectionClosed) as info:
        client.recv(timeout=WAIT)
    assert info.value.code == 1008
    assert recorder.closed.wait(WAIT)
    assert recorder.closes == [client.id]  # its close handler ran, and left "blue"...
    raw.send_text("room blue still in it")
    assert raw.recv().endswith(":still in it")  # ...of the old connection only
    raw.close()


@pytest.mark.parametrize(
    ("first", "code"),
    [
        (b"binary", 1003),
        ("not json", 1002),
        ('{"type": "resume"}', 1002),
        ('{"type": "resume", "session": "", "epoch": "", "offset": 0}', 1008),
    ],
)
def test_a_bad_first_message_closes_with_its_code(
    address: str, recorder: Recorder, first: str | bytes, code: int
) -> None:
    raw = RawClient(address, "/live", {"Sec-WebSocket-Protocol": SUBPROTOCOL})
    assert f"Sec-WebSocket-Protocol: {SUBPROTOCOL}" in raw.response_head
    if isinstance(first, bytes):
        raw.send_frame(0x2, first)
    else:
        raw.send_text(first)
    close = raw.recv_close()
    assert isinstance(close, Close)
    assert close.code == code
    assert recorder.connects == []  # no handler ran


def test_no_first_message_in_time_closes_with_1008(
    address: str, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery_module, "FIRST_MESSAGE_TIMEOUT", 0.2)
    raw = RawClient(address, "/live", {"Sec-WebSocket-Protocol": SUBPROTOCOL})
    assert raw.recv_close().code == 1008
    assert recorder.connects == []


def test_the_hello_names_the_position(address: str) -> None:
    plain = plain_connect(address, "/live")
    plain.send("room none x")  # one entry in the log before the client comes
    raw = RawClient(address, "/live", {"Sec-WebSocket-Protocol": SUBPROTOCOL})
    raw.send_text('{"type": "start"}')
    hello = json.loads(raw.recv())
    assert hello["type"] == "hello"
    assert hello["offset"] >= 1
    assert (hello["resumed"], hello["recovered"], hello["missed"]) == (False, False, 0)
    raw.send_text("hi")
    assert raw.recv() == f"{hello['offset'] + 1}:echo hi"
    raw.close()


def test_recovery_from_the_app_config(serve: Callable[[Flask], str]) -> None:
    app = Flask(__name__)
    app.config["GEO_WS_RECOVERY"] = True
    echo = WebSocket(app, "/echo")
    echo.on("message")(lambda msg: msg)
    with connect(f"ws://{serve(app)}/echo", resume=True, timeout=WAIT) as client:
        client.send("x")
        assert client.recv(timeout=WAIT) == "x"


def test_a_bad_recovery_setting_fails_at_once() -> None:
    with pytest.raises(ValueError, match="recovery"):
        WebSocket(Flask(__name__), "/x", recovery="yes")  # type: ignore[arg-type]
