"""Handshakes that skip Flask's dispatch (geo_ws.flask.direct), over real sockets."""

from __future__ import annotations

import functools
import json

import pytest
from flask import (
    Blueprint,
    Flask,
    request,
    request_started,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface

from geo_ws import WebSocket
from geo_ws.flask.direct import direct_routes

from ..helpers import connect

# -- handshakes that skip Flask's dispatch -----------------------------------------------


def test_handlers_see_the_request_flask_would_have_matched(serve) -> None:
    # No hooks, no middleware: handshakes skip Flask's dispatch, and the first handler
    # gets the request context the dispatch would have made.
    app = Flask(__name__)
    blueprint = Blueprint("live", __name__, url_prefix="/live")
    websocket = WebSocket(blueprint, "/feed", endpoint="feed")
    app.register_blueprint(blueprint)

    @websocket.on("message")
    def message(msg):
        return [
            request.path,
            request.endpoint,
            request.blueprint,
            request.url_rule.rule,
            request.view_args,
            url_for("live.feed"),
            request.headers.get("X-Token"),
        ]

    address = serve(app)
    client = connect(address, "/live/feed", header=["X-Token: t0k"])
    client.send("x")
    assert json.loads(client.recv()) == [
        "/live/feed",
        "live.feed",
        "live",
        "/live/feed",
        {},
        f"ws://{address}/live/feed",  # Werkzeug builds WebSocket rules' URLs in full
        "t0k",
    ]


def test_only_what_flask_would_just_pass_to_the_view_skips_its_dispatch() -> None:
    def decorator(view):
        @functools.wraps(view)
        def wrapper(**kwargs):
            return view(**kwargs)

        return wrapper

    app = Flask(__name__)
    plain = WebSocket(app, "/plain")
    WebSocket(app, "/rooms/<room>")  # a converter: Flask matches it
    WebSocket(app, "/guarded", decorators=[decorator])
    WebSocket(app, "/twice", endpoint="first")
    WebSocket(app, "/twice", endpoint="second")  # which one is Flask's to say
    hooked, free = Blueprint("hooked", __name__), Blueprint("free", __name__)
    WebSocket(hooked, "/hooked/ws")
    in_free = WebSocket(free, "/free/ws")
    hooked.before_request(lambda: None)
    app.register_blueprint(hooked)
    app.register_blueprint(free)
    routes = direct_routes(app)
    assert {path: endpoint for path, (endpoint, _) in routes.items()} == {
        "/plain": plain,
        "/free/ws": in_free,
    }
    # Flask's dispatch has begun, as it would have: routes and hooks are settled.
    with pytest.raises(AssertionError, match="no longer be called"):
        app.before_request(lambda: None)

    hooked_app = Flask(__name__)
    WebSocket(hooked_app, "/plain")
    hooked_app.after_request(lambda response: response)
    assert direct_routes(hooked_app) == {}


def test_middleware_and_signal_receivers_see_every_handshake(app: Flask, serve) -> None:
    websocket = WebSocket(app, "/ws")
    websocket.on("connect")(lambda: "in")
    seen: list[str] = []
    wsgi_app = app.wsgi_app

    def middleware(environ, start_response):
        seen.append("middleware " + environ["PATH_INFO"])
        return wsgi_app(environ, start_response)

    def started(sender: Flask, **extra) -> None:
        seen.append("started " + request.path)

    address = serve(app)
    app.wsgi_app = middleware  # type: ignore[method-assign]
    assert connect(address, "/ws").recv() == "in"
    assert seen == ["middleware /ws"]
    del app.wsgi_app
    with request_started.connected_to(started, app):
        assert connect(address, "/ws").recv() == "in"
    assert seen == ["middleware /ws", "started /ws"]


def test_a_custom_session_interface_sees_every_handshake(app: Flask, serve) -> None:
    # A server-side session store may count or refresh visits: Flask's dispatch opens
    # and saves the session of a handshake as of any request.
    calls: list[str] = []

    class Sessions(SecureCookieSessionInterface):
        def open_session(self, app, request):
            calls.append("open " + request.path)
            return super().open_session(app, request)

        def save_session(self, app, session, response) -> None:
            calls.append("save")
            super().save_session(app, session, response)

    app.session_interface = Sessions()
    WebSocket(app, "/ws").on("connect")(lambda: "in")
    assert connect(serve(app), "/ws").recv() == "in"
    assert calls == ["open /ws", "save"]
