"""geo_ws as a target of the side-by-side benchmark (../shared/bench) and of Autobahn.

What a user would write with geo_ws's public API on its built-in server:

* ``ws://127.0.0.1:$PORT/echo``: every message comes back with the same opcode;
* ``ws://127.0.0.1:$PORT/broadcast``: every message goes to every client of the
  endpoint, the sender included.

    PORT=9999 python scripts/bench_target.py           # SIGTERM or Ctrl-C stops it

``MAX_MESSAGE_SIZE`` (bytes, default 16 MiB: Autobahn's 9.* cases send 16 MiB) sets
the limit of ``/echo``.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

from flask import Flask  # noqa: E402

from geo_ws import WebSocket, run  # noqa: E402

app = Flask(__name__)

echo = WebSocket(
    app,
    "/echo",
    max_message_size=int(os.environ.get("MAX_MESSAGE_SIZE", 2**24)),
    # COMPRESSION=deflate negotiates permessage-deflate (Autobahn's 12.* and 13.*).
    compression=os.environ.get("COMPRESSION") or None,
)


@echo.on("message")
def on_echo(msg):
    return msg


room = WebSocket(app, "/broadcast")


@room.on("message")
def on_broadcast(ws, msg):
    ws.sync_broadcast(msg)


if __name__ == "__main__":
    run(app, "127.0.0.1", int(os.environ.get("PORT", "8765")))
