"""The pytest plugin for users' apps (geo_ws.testing): geo_ws's own tests use it too."""

from __future__ import annotations

import pytest
from flask import Flask

from geo_ws import HandshakeError, WebSocket
from geo_ws.testing import LiveServer

pytest_plugins = ["pytester"]


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    chat = WebSocket(app, "/chat")

    @chat.on("message")
    def message(ws, msg):
        ws.sync_broadcast(f"{ws.query_params.get('name')}: {msg}")

    feed = WebSocket(app, "/feed", recovery=True)

    @feed.on("message")
    def relay(ws, msg):
        if msg == "drop":  # as a restarting server would: the client should come back
            ws.close(1012, "restart")
        else:
            ws.sync_broadcast(msg)

    @app.get("/health")
    def health() -> str:
        return "ok"

    return app


def test_the_fixture_serves_the_app_fixture(geo_ws_server: LiveServer) -> None:
    alice = geo_ws_server.connect("/chat", query={"name": "alice"})
    bob = geo_ws_server.connect("/chat", query={"name": "bob"}, headers={"X-Trace": "1"})
    alice.send("hi")
    assert alice.recv(timeout=5) == "alice: hi"
    assert bob.recv(timeout=5) == "alice: hi"
    bob.send(b"\x00binary")
    assert alice.recv(timeout=5) == "bob: b'\\x00binary'"
    alice.close()
    assert alice.close_code == 1000
    assert geo_ws_server.url("/health", "http").startswith("http://127.0.0.1:")


def test_a_resuming_client_comes_back_with_every_message_once(
    geo_ws_server: LiveServer,
) -> None:
    reader = geo_ws_server.connect("/feed", resume=True)
    writer = geo_ws_server.connect("/feed", resume=True)
    first_id = reader.id
    reader.send("drop")  # the server closes it with 1012: it reconnects and resumes
    for number in range(20):
        writer.send(f"message {number}")  # before, during and after the reconnection
    expected = [f"message {number}" for number in range(20)]
    assert [reader.recv(timeout=5) for _ in expected] == expected
    assert [writer.recv(timeout=5) for _ in expected] == expected
    assert (reader.reconnects, reader.resumed, reader.recovered) == (1, True, True)
    assert reader.id == first_id
    with pytest.raises(TimeoutError):
        reader.recv(timeout=0.2)  # and nothing twice


def test_a_refused_handshake_raises(geo_ws_server: LiveServer) -> None:
    with pytest.raises(HandshakeError) as error:
        geo_ws_server.connect("/nowhere")
    assert error.value.status == 404


def test_the_plugin_is_registered_for_users(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from flask import Flask
        from geo_ws import WebSocket

        @pytest.fixture
        def app():
            app = Flask(__name__)
            WebSocket(app, "/echo").on("message")(lambda msg: msg.upper())
            return app

        def test_echo(geo_ws_server):
            client = geo_ws_server.connect("/echo")
            client.send("shout")
            assert client.recv(timeout=5) == "SHOUT"
        """
    )
    # A new process, with the plugin found through the installed entry point.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
