"""An app that serves geo_ws.js, an empty page to import it from, and endpoints to talk to.

    python -m geo_ws run tests.live_apps.browser_client:app

``/echo`` (no recovery) echoes each message; ``"restart"`` closes with 1012 (service
restart) instead, so that the client reconnects.
"""

from flask import Flask

from geo_ws import GeoWS, WebSocket

app = Flask(__name__)
GeoWS(app)
echo = WebSocket(app, "/echo")


@echo.on("message")
def reply(ws, msg):
    if msg == "restart":
        ws.close(1012, "restart")
        return None
    return msg


@app.get("/")
def page() -> str:
    return "<!doctype html><title>geo_ws.js</title>"
