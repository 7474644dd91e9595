"""The endpoints that docs/load.md's ``geo-ws load`` commands run against.

    python examples/echo.py [--port 8000]
    geo-ws run examples.echo:app

- ``/echo``: sends every message back as it came (text or binary): the ``echo``,
  ``connect`` and ``idle`` scenarios;
- ``/room``: sends every message to every client of the room: the ``broadcast`` scenario;
- ``/feed``: the same with ``recovery=True``: ``broadcast --resume``;
- ``/chat``: a little request/response protocol for docs/load.md's ``login.py`` script:
  ``hello`` is answered ``welcome``, ``login NAME`` is answered ``hi NAME``, anything
  else gets no answer.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402

from flask import Flask  # noqa: E402

from geo_ws import WebSocket, run  # noqa: E402

app = Flask(__name__)

# -- /echo: every message back to its sender --------------------------------------------
echo = WebSocket(app, "/echo")


@echo.on("message")
def echo_message(msg):
    return msg


# -- /room: every message to every client ------------------------------------------------
room = WebSocket(app, "/room")


@room.on("message")
def room_message(ws, msg):
    ws.sync_broadcast(msg)


# -- /feed: /room with recovery: clients that drop and come back miss nothing ----------
feed = WebSocket(app, "/feed", recovery=True)
feed.on("message")(room_message)


# -- /chat: hello -> welcome, login NAME -> hi NAME, the rest unanswered -----------------
chat = WebSocket(app, "/chat")


@chat.on("message")
def chat_message(msg):
    if msg == "hello":
        return "welcome"
    command, _, name = msg.partition(" ")
    if command == "login" and name:
        return f"hi {name}"
    return None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    run(app, port=parser.parse_args().port)
