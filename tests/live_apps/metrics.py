"""An app that serves its metrics at /metrics (run with gunicorn: ``tests.live_apps.metrics:app``).

``/echo`` says which worker it is (its pid) on connect, then echoes; ``quit`` makes the
server close with 4002, ``all:TEXT`` broadcasts TEXT (through ``GEO_WS_BROKER_URL``'s
broker, if set). ``/ping`` pings its clients every 0.2 s.
"""

import os

from flask import Flask

from geo_ws import WebSocket


def create_app(prefix: str = "") -> Flask:
    """The app, with ``GEO_WS_METRICS_PATH`` set before its endpoints are made.

    Args:
        prefix: put before the endpoints' paths (tests in one process share the
            metrics: each labels its own endpoints).
    """
    app = Flask(__name__)
    app.config["GEO_WS_METRICS_PATH"] = "/metrics"
    echo = WebSocket(app, prefix + "/echo")

    @echo.on("connect")
    def connect():
        return str(os.getpid())

    @echo.on("message")
    def message(ws, msg):
        if msg == "quit":
            ws.close(4002, "asked to")
            return None
        if isinstance(msg, str) and msg.startswith("all:"):
            ws.sync_broadcast(msg[4:])
            return None
        return msg

    WebSocket(app, prefix + "/ping", ping_interval=0.2)
    return app


app = create_app()
