"""A live app for the presence tests, served in-process or by gunicorn with a Redis broker.

    gunicorn -k geo_ws.gunicorn.Worker -w 3 -e GEO_WS_BROKER_URL=redis://... \\
        tests.live_apps.presence:app

``/ws?name=NAME`` makes each client present as ``{"name": NAME, "pid": PID}`` and
greets it with ``{"id": ws.id, "pid": PID}``; pings go every :data:`PING_INTERVAL`
seconds. It takes JSON commands:

- ``{"presence": ROOM}`` (``null``: the endpoint): answers ``{"presence": {ID: INFO}}``
- ``{"count": ROOM}``: answers ``{"count": N}``
- ``{"join": ROOM}`` / ``{"leave": ROOM}``: answers ``{"joined": ROOM}`` / ``{"left": ROOM}``
- ``{"info": INFO}``: ``ws.set_presence(INFO)``, answers ``{"info": INFO}``
- ``{"clear": true}``: ``ws.clear_presence()``, answers ``{"cleared": true}``

``/watch`` clients are greeted with ``{"pid": PID}`` and are not present; every
presence event is broadcast to them as
``{"event": KIND, "id": ID, "room": ROOM, "info": INFO, "pid": PID}`` (PID: the
process that told it). ``GET /presence`` answers the endpoint's presence as JSON.
"""

from __future__ import annotations

import json
import os

from flask import Flask

from geo_ws import PresenceEvent
from geo_ws.delivery.broker import Broker
from geo_ws.flask.connector import WebSocketConnector
from geo_ws.flask.endpoint import WebSocket

#: Seconds between keepalive pings, hence between presence refreshes (times two).
PING_INTERVAL = 1.0


def create_app(broker: Broker | str | None = None) -> Flask:
    """The app, with ``broker`` (default: ``GEO_WS_BROKER_URL``)."""
    app = Flask(__name__)
    endpoint = WebSocket(app, "/ws", ping_interval=PING_INTERVAL, broker=broker)
    watch = WebSocket(app, "/watch", ping_interval=None, broker=broker)

    @endpoint.on("connect")
    def connect(ws: WebSocketConnector) -> dict[str, object]:
        ws.set_presence({"name": ws.query_params.get("name", ""), "pid": os.getpid()})
        return {"id": ws.id, "pid": os.getpid()}

    @endpoint.on("message")
    def message(ws: WebSocketConnector, msg: str) -> object:
        command = json.loads(msg)
        if "presence" in command:
            return {"presence": endpoint.presence(command["presence"])}
        if "count" in command:
            return {"count": endpoint.presence_count(command["count"])}
        if "join" in command:
            ws.join(command["join"])
            return {"joined": command["join"]}
        if "leave" in command:
            ws.leave(command["leave"])
            return {"left": command["leave"]}
        if "info" in command:
            ws.set_presence(command["info"])
            return {"info": ws.presence}
        ws.clear_presence()
        return {"cleared": ws.presence is None}

    @watch.on("connect")
    def watching() -> dict[str, object]:
        return {"pid": os.getpid()}

    @endpoint.on_presence
    def tell(event: PresenceEvent) -> None:
        news = {"event": event.kind, "id": event.connection_id, "room": event.room}
        watch.sync_broadcast(json.dumps({**news, "info": event.info, "pid": os.getpid()}))

    @app.get("/presence")
    def presence() -> dict[str, object]:
        return endpoint.presence()

    return app


app = create_app()
