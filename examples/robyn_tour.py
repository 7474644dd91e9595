"""Every snippet of Robyn's WebSocket chapter, one endpoint each, on Flask + gevent.

python examples/robyn_tour.py [--port 8000]
geo-ws run examples.robyn_tour:app
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402

from flask import Flask  # noqa: E402

from geo_ws import WebSocket, run  # noqa: E402

app = Flask(__name__)

# -- /web_socket: a returned value is sent to the client -------------------------------
websocket = WebSocket(app, "/web_socket")


@websocket.on("connect")
def connect():
    return "Connected to ws"


@websocket.on("message")
def message(ws, msg, global_dependencies):
    return "Hello world, from ws"


@websocket.on("close")
def close():
    return "Goodbye world, from ws"


# -- /sync_send_to and /async_send_to: send to one client by id ------------------------
sync_send_to = WebSocket(app, "/sync_send_to")


@sync_send_to.on("message")
def sync_send_to_message(ws, msg):
    ws.sync_send_to(ws.id, "This is a message to self")
    return ""


async_send_to = WebSocket(app, "/async_send_to")


@async_send_to.on("message")
async def async_send_to_message(ws, msg):
    await ws.async_send_to(ws.id, "This is a message to self")
    return ""


# -- /sync_broadcast and /async_broadcast: send to every client of the endpoint --------
sync_broadcast = WebSocket(app, "/sync_broadcast")


@sync_broadcast.on("message")
def sync_broadcast_message(ws, msg):
    ws.sync_broadcast("This is a message to self")
    return ""


async_broadcast = WebSocket(app, "/async_broadcast")


@async_broadcast.on("message")
async def async_broadcast_message(ws, msg):
    await ws.async_broadcast("This is a message to self")
    return ""


# -- /query: query parameters ----------------------------------------------------------
query = WebSocket(app, "/query")


@query.on("message")
def query_message(ws, msg):
    if ws.query_params.get("name") == "gordon" and ws.query_params.get("desg") == "commissioner":
        ws.sync_broadcast("Gordon authorized to login!")
    return ""


# -- /close: the server closes the connection ------------------------------------------
closing = WebSocket(app, "/close")


@closing.on("message")
def closing_message(ws, msg):
    if msg == "disconnect":
        ws.close()
        return "Closing connection"
    return "Message received"


@app.get("/")
def index():
    """An HTTP route beside the WebSockets: the list of endpoints."""
    return {
        "websockets": [
            "/web_socket",
            "/sync_send_to",
            "/async_send_to",
            "/sync_broadcast",
            "/async_broadcast",
            "/query?name=gordon&desg=commissioner",
            "/close",
        ]
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    run(app, port=parser.parse_args().port)
