"""Apps written for gevent-websocket run unchanged on geo_ws (geo_ws.server.legacy).

The same legacy WSGI app is served by gevent-websocket's own WebSocketHandler and by
geo_ws's server, and a raw client compares what it sees. Where gevent-websocket is
wrong, geo_ws follows RFC 6455 and the test says so.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, request
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler

from geo_ws.io.options import Options
from geo_ws.protocol.frames import Opcode
from geo_ws.protocol.machine import Close, Failure, Message, Ping
from geo_ws.server.builtin import Server
from geo_ws.server.legacy import legacy_options

from ..helpers import WAIT, RawClient


def legacy_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A Flask-Sockets-style echo: the shape of countless gevent-websocket apps."""
    ws = environ.get("wsgi.websocket")
    if ws is None:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"plain http"]
    while not ws.closed:
        message = ws.receive()
        if message is None:
            break
        if message == "close please":
            ws.close(4001, "custom")
            break
        ws.send(message)
    return []


@pytest.fixture(params=["gevent-websocket", "geo_ws"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """The legacy app on one server or the other: ``(server name, host:port)``."""
    if request.param == "gevent-websocket":
        server: WSGIServer = WSGIServer(
            ("127.0.0.1", 0), legacy_app, handler_class=WebSocketHandler, log=None
        )
    else:
        server = Server(("127.0.0.1", 0), legacy_app, log=None)
    server.start()
    yield request.param, f"127.0.0.1:{server.address[1]}"
    server.stop(timeout=1)


def test_text_and_binary_echo_alike(served: tuple[str, str]) -> None:
    _, address = served
    client = RawClient(address, "/")
    assert client.status == 101
    client.send_text("héllo")
    assert client.recv() == "héllo"
    client.send_frame(Opcode.BINARY, b"\x00\xff")
    assert client.recv() == b"\x00\xff"


def test_plain_http_still_reaches_the_app(served: tuple[str, str]) -> None:
    _, address = served
    with urllib.request.urlopen(f"http://{address}/", timeout=WAIT) as response:
        assert response.read() == b"plain http"


def test_a_close_code_from_the_app(served: tuple[str, str]) -> None:
    name, address = served
    client = RawClient(address, "/")
    client.send_text("close please")
    event = client.recv_event()
    if name == "geo_ws":
        assert event == Close(4001, "custom")
    else:  # gevent-websocket puts the reason on the wire without the code
        assert isinstance(event, Failure), event


def test_the_client_close_is_answered(served: tuple[str, str]) -> None:
    name, address = served
    client = RawClient(address, "/")
    client.send_close(1000, "bye")
    event = client.recv_event()
    if name == "geo_ws":
        assert event == Close(1000, "")
        assert client.at_eof()
    else:  # gevent-websocket echoes "bytearray(b'bye')" as the payload, without a code
        assert not (isinstance(event, Close) and event.code == 1000), event


def test_invalid_utf8_gets_1007(served: tuple[str, str]) -> None:
    name, address = served
    client = RawClient(address, "/")
    client.send_frame(Opcode.TEXT, b"\xff\xfe")
    event = client.recv_event()
    if name == "geo_ws":
        assert isinstance(event, Close) and event.code == 1007
    else:  # gevent-websocket answers with an empty Close frame
        assert event == Close(1005, "")


def test_unmasked_frames_are_refused(served: tuple[str, str]) -> None:
    name, address = served
    client = RawClient(address, "/")
    client.send_frame(Opcode.TEXT, b"unmasked", masked=False)
    event = client.recv_event()
    if name == "geo_ws":
        assert isinstance(event, Close) and event.code == 1002
    else:  # gevent-websocket accepts them (RFC 6455 section 5.1 says fail)
        assert event == Message("unmasked")


def test_a_flask_apps_geo_ws_config_sets_the_limits_of_its_legacy_connections() -> None:
    app = Flask(__name__)
    app.config["GEO_WS_MAX_MESSAGE_SIZE"] = 10
    app.config["GEO_WS_PING_INTERVAL"] = 0.05

    @app.route("/legacy", websocket=True)  # (Werkzeug answers 400 to upgrades elsewhere)
    def legacy() -> str:
        ws = request.environ["wsgi.websocket"]
        while (message := ws.receive()) is not None:
            ws.send(message)
        return ""

    server = Server(("127.0.0.1", 0), app, log=None)
    server.start()
    try:
        client = RawClient(f"127.0.0.1:{server.address[1]}", "/legacy")
        assert client.status == 101
        event = client.recv_event()  # the keepalive ping, within 50 ms
        assert isinstance(event, Ping), event
        client.send_text("0123456789")  # the limit: 10 bytes
        assert client.recv() == "0123456789"
        client.send_text("0123456789!")
        assert client.recv_close().code == 1009
    finally:
        server.stop(timeout=1)


def test_other_apps_get_geo_ws_defaults() -> None:
    assert legacy_options(legacy_app) == Options()
    assert legacy_options(Flask(__name__)) == Options()  # nothing configured
