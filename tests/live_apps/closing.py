"""A live app for the shutdown tests: ``geo-ws run tests.live_apps.closing:app``.

``/ws`` says ``welcome`` on connect and echoes messages; its close handler prints
``close handler ran for NAME`` (``NAME`` from ``?name=``) on stdout, flushed, and
returns ``bye``. ``GET /`` answers ``ok``. No monkey-patching here: ``geo-ws run``
does it before importing the app.
"""

from flask import Flask

from geo_ws.flask.connector import WebSocketConnector
from geo_ws.flask.endpoint import WebSocket

app = Flask(__name__)
endpoint = WebSocket(app, "/ws")


@endpoint.on("connect")
def connect() -> str:
    return "welcome"


@endpoint.on("message")
def message(msg: str | bytes) -> str | bytes:
    return msg


@endpoint.on("close")
def close(ws: WebSocketConnector) -> str:
    print(f"close handler ran for {ws.query_params.get('name')}", flush=True)
    return "bye"


@app.get("/")
def index() -> str:
    return "ok"
