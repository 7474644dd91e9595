"""The Flask extension pattern and GEO_WS_* config keys.

(geo_ws.flask.extension, geo_ws.io.options)
"""

from __future__ import annotations

import signal

import pytest
import websockets.sync.client
from flask import Blueprint, Flask

from geo_ws import DeflateOptions, GeoWS, WebSocket
from geo_ws.io.options import Options

from ..helpers import RawClient, connect
from ..live_apps.process import ServerProcess


def test_init_app_fills_in_every_config_default() -> None:
    app = Flask(__name__)
    app.config["GEO_WS_PING_INTERVAL"] = 5
    GeoWS(app)
    assert app.config["GEO_WS_PING_INTERVAL"] == 5  # what the app set stays
    assert app.config["GEO_WS_MAX_MESSAGE_SIZE"] == 2**20
    assert all("GEO_WS_" + name.upper() in app.config for name in Options.names())


def test_config_sets_the_default_and_an_argument_overrides_it(serve) -> None:
    app = Flask(__name__)
    app.config["GEO_WS_MAX_MESSAGE_SIZE"] = 10
    for path, kwargs in (("/config", {}), ("/explicit", {"max_message_size": 20})):
        WebSocket(app, path, **kwargs).on("message")(lambda msg: msg)
    address = serve(app)
    for path, limit in (("/config", 10), ("/explicit", 20)):
        client = RawClient(address, path)
        client.send_text("x" * limit)
        assert client.recv() == "x" * limit
        client.send_text("x" * (limit + 1))
        assert client.recv_close().code == 1009


def test_a_blueprint_follows_each_app_config(serve) -> None:
    blueprint = Blueprint("bp", __name__)
    WebSocket(blueprint, "/ws").on("message")(lambda msg: msg)
    small, large = Flask("small"), Flask("large")
    small.config["GEO_WS_MAX_MESSAGE_SIZE"] = 5
    for app in (small, large):
        app.register_blueprint(blueprint)
    small_client, large_client = RawClient(serve(small), "/ws"), RawClient(serve(large), "/ws")
    large_client.send_text("123456")
    assert large_client.recv() == "123456"
    small_client.send_text("123456")
    assert small_client.recv_close().code == 1009


def test_compression_from_config(serve) -> None:
    app = Flask(__name__)
    app.config["GEO_WS_COMPRESSION"] = "deflate"
    WebSocket(app, "/ws").on("message")(lambda msg: msg)
    address = serve(app)
    with websockets.sync.client.connect(f"ws://{address}/ws", compression="deflate") as client:
        assert "permessage-deflate" in client.response.headers["Sec-WebSocket-Extensions"]
        client.send("compressed " * 20)
        assert client.recv(timeout=5) == "compressed " * 20


def test_bad_settings_fail_at_once() -> None:
    with pytest.raises(ValueError, match="compression"):
        WebSocket(Flask(__name__), "/ws", compression="brotli")
    assert Options.resolve({"compression": "deflate"}, {}).compression == DeflateOptions()


def test_flask_geo_ws_run_serves_the_app_factory() -> None:
    args = ["-m", "flask", "--app", "tests.live_apps.factory:create_app", "geo-ws", "run"]
    with ServerProcess(*args, "--port", "0") as server:
        host, port = server.wait_serving()
        client = connect(f"{host}:{port}", "/echo")
        client.send("from flask's CLI")
        assert client.recv() == "from flask's CLI"
        client.close()


def test_flask_geo_ws_run_says_it_patched_too_late_and_exits_quietly() -> None:
    args = ["-m", "flask", "--app", "tests.live_apps.factory:create_app", "geo-ws", "run"]
    with ServerProcess(*args, "--port", "0") as server:
        server.wait_serving()
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
    lines = server.stderr.finish()
    text = "\n".join(lines)
    # Flask imported the app (and itself) before the command could patch: say so, and how.
    assert "monkey-patched too late" in text and "monkey.patch_all()" in text, text
    assert "geo-ws run module:app" in text
    # Nothing noisy at exit (logging's finalizers used to fail: "Exception ignored in").
    assert "Exception ignored" not in text and "Traceback" not in text, text
