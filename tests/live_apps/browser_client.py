"""An app that serves geo_ws.js, an empty page to import it from, and endpoints to talk to.

    python -m geo_ws run tests.live_apps.browser_client:app

``/echo`` (no recovery) echoes each message; ``"restart"`` closes with 1012 (service
restart) instead, so that the client reconnects. ``/feed`` (recovery) and ``/short``
(recovery for half a second) broadcast each message; ``"restart"`` closes with 1012 too.
"""

from flask import Flask

from geo_ws import GeoWS, Recovery, WebSocket

app = Flask(__name__)
GeoWS(app)
echo = WebSocket(app, "/echo")


@echo.on("message")
def reply(ws, msg):
    if msg == "restart":
        ws.close(1012, "restart")
        return None
    return msg


def relay(ws, msg):
    if msg == "restart":
        ws.close(1012, "restart")
    else:
        ws.sync_broadcast(msg)


WebSocket(app, "/feed", recovery=True).on("message")(relay)
WebSocket(app, "/short", recovery=Recovery(age=0.5)).on("message")(relay)


@app.get("/")
def page() -> str:
    return "<!doctype html><title>geo_ws.js</title>"
