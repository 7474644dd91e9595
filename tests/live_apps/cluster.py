"""A live app for the multi-process tests, under gunicorn with a Redis broker.

    gunicorn -k geo_ws.gunicorn.Worker -w 3 -e GEO_WS_BROKER_URL=redis://... \\
        tests.live_apps.cluster:app

``/ws`` greets each client with ``{"id": ws.id, "pid": PID}``, then takes JSON
commands:

- ``{"all": TEXT}``: ``ws.sync_broadcast(TEXT)``
- ``{"to": ID, "text": TEXT}``: ``ws.sync_send_to(ID, TEXT)``
- ``{"join": ROOM}`` / ``{"leave": ROOM}``: answers ``{"joined": ROOM}`` / ``{"left": ROOM}``
- ``{"room": ROOM, "text": TEXT}``: ``ws.sync_broadcast(TEXT, room=ROOM)``
- ``{"close": ID, "code": CODE}``: ``endpoint.close(ID, CODE)``
- ``{"sleep": SECONDS}``: ``time.sleep(SECONDS)`` in the handler, then answers ``slept``

Every other message is echoed. ``GET /`` answers ``ok``. In-process tests build
apps with brokers of their own with :func:`create_app`.
"""

import json
import os
import time

from flask import Flask

from geo_ws.delivery.broker import Broker
from geo_ws.flask.connector import WebSocketConnector
from geo_ws.flask.endpoint import WebSocket


def create_app(broker: Broker | str | None = None) -> Flask:
    """The app, with ``broker`` (default: ``GEO_WS_BROKER_URL``)."""
    app = Flask(__name__)
    endpoint = WebSocket(app, "/ws", ping_interval=None, broker=broker)

    @endpoint.on("connect")
    def connect(ws: WebSocketConnector) -> dict[str, object]:
        return {"id": ws.id, "pid": os.getpid()}

    @endpoint.on("message")
    def message(ws: WebSocketConnector, msg: str) -> object:
        command = json.loads(msg)
        if "all" in command:
            ws.sync_broadcast(command["all"])
        elif "to" in command:
            ws.sync_send_to(command["to"], command["text"])
        elif "join" in command:
            ws.join(command["join"])
            return {"joined": command["join"]}
        elif "leave" in command:
            ws.leave(command["leave"])
            return {"left": command["leave"]}
        elif "room" in command:
            ws.sync_broadcast(command["text"], room=command["room"])
        elif "close" in command:
            endpoint.close(command["close"], command["code"])
        elif "sleep" in command:
            time.sleep(command["sleep"])  # patched by the worker: only this client waits
            return "slept"
        else:
            return msg
        return None

    @app.get("/")
    def index() -> str:
        return "ok"

    return app


app = create_app()
