"""A live app for the address limits across workers, behind ``ProxyFix``.

    gunicorn -k geo_ws.gunicorn.Worker -w 3 -e GEO_WS_BROKER_URL=redis://... \\
        tests.live_apps.limits:app

Each client's address is the last ``X-Forwarded-For`` entry, as ``ProxyFix(x_for=1)``
makes it. Both endpoints greet a client with ``{"pid": PID}``, answer ``spin SECONDS``
by keeping their worker busy that long (it accepts no connection meanwhile: the next
one goes to another worker) and then ``spun``, and echo other messages:

- ``/conns``: at most :data:`MAX_CONNECTIONS` open connections per address, refreshed in
  Redis every second (the keepalive interval);
- ``/handshakes``: at most :data:`MAX_HANDSHAKES` handshakes per address and minute.
"""

import os
import time

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from geo_ws.flask.endpoint import WebSocket

MAX_CONNECTIONS = 6
MAX_HANDSHAKES = 10

app = Flask(__name__)
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
conns = WebSocket(app, "/conns", ping_interval=1.0, max_connections_per_ip=MAX_CONNECTIONS)
handshakes = WebSocket(app, "/handshakes", max_handshakes_per_ip_per_minute=MAX_HANDSHAKES)


@conns.on("connect")
@handshakes.on("connect")
def connect() -> dict[str, int]:
    return {"pid": os.getpid()}


@conns.on("message")
@handshakes.on("message")
def message(msg: str) -> str:
    if msg.startswith("spin "):
        end = time.perf_counter() + float(msg[5:])
        while time.perf_counter() < end:  # busy: time.sleep would let the worker accept
            pass
        return "spun"
    return msg
