"""A live app for the stress tests: ``geo-ws run tests.live_apps.stress:app``.

``/room`` broadcasts every message to every client of the room (the sender
included); ``flood me`` instead sends 4 MiB to its sender alone, more than the kernel
buffers and the 256 KiB outbox hold for a client that does not read;
``/echo`` echoes; ``/sink`` takes messages and answers nothing. ``GET /rss`` answers
the server's resident memory in KiB.
"""

from flask import Flask

from geo_ws.flask.connector import WebSocketConnector
from geo_ws.flask.endpoint import WebSocket

app = Flask(__name__)
room = WebSocket(app, "/room", max_outbox_size=256 * 1024, close_timeout=2, ping_interval=None)
echo = WebSocket(app, "/echo")
sink = WebSocket(app, "/sink")


@room.on("message")
def broadcast(ws: WebSocketConnector, msg: str | bytes) -> None:
    if msg == "flood me":
        for _ in range(16):
            ws.sync_send_to(ws.id, bytes(256 * 1024))
    else:
        ws.sync_broadcast(msg)


@echo.on("message")
def echo_message(msg: str | bytes) -> str | bytes:
    return msg


@sink.on("message")
def swallow(msg: str | bytes) -> None:
    pass


@app.get("/rss")
def rss() -> str:
    with open("/proc/self/status") as status:
        return next(line.split()[1] for line in status if line.startswith("VmRSS:"))
