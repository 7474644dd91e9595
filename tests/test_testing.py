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
