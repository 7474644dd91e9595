"""A live app with a recovery endpoint, for the deploy tests (built-in server and
gunicorn, with ``GEO_WS_BROKER_URL`` set to a Redis).

``/ws`` (recovery, window ``RESUME_AGE`` seconds, default 300) answers ``{"join": ROOM}``
with ``joined ROOM``, broadcasts TEXT for ``{"all": TEXT}`` and echoes everything else;
what most tests count comes from :class:`~geo_ws.Emitter` broadcasts, which outlive any
server process. Its connect handler prints ``connect ID RESUMED RECOVERED PID`` to stdout.
"""

import json
import os

from flask import Flask

from geo_ws import Recovery, WebSocket
from geo_ws.flask.connector import WebSocketConnector

app = Flask(__name__)
endpoint = WebSocket(
    app,
    "/ws",
    ping_interval=None,
    recovery=Recovery(age=float(os.environ.get("RESUME_AGE", "300"))),
)


@endpoint.on("connect")
def connect(ws: WebSocketConnector) -> None:
    print("connect", ws.id, ws.resumed, ws.recovered, os.getpid(), flush=True)


@endpoint.on("message")
def message(ws: WebSocketConnector, msg: str) -> str | None:
    if msg.startswith("{"):
        command = json.loads(msg)
        if "all" in command:
            ws.sync_broadcast(command["all"])
            return None
        ws.join(command["join"])
        return f"joined {command['join']}"
    return msg


@app.get("/")
def index() -> str:
    return "ok"
