"""What the load tool's tests share: an app with their endpoints, an in-process run that
returns every figure, and ``python -m geo_ws load`` as a bounded subprocess."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from flask import Flask
from gevent.event import Event

from geo_ws import WebSocket
from geo_ws.load.options import LoadOptions
from geo_ws.load.report import summarize
from geo_ws.load.runner import run
from tests.live_apps.process import run_python

#: ``/resume`` drops its other clients after every this many messages.
DROP_EVERY = 150
#: The time limit of one ``geo-ws load`` subprocess.
PROCESS_TIMEOUT = 30.0


class App:
    """A Flask app with the endpoints of these tests, and what they saw."""

    def __init__(self) -> None:
        self.flask = Flask(__name__)
        self.echoed = 0
        self.busy = Event()  # set once /echo has echoed 200 messages
        echo = WebSocket(self.flask, "/echo", max_message_size=2**25)

        @echo.on("message")
        def on_echo(msg: str | bytes) -> str | bytes:
            self.echoed += 1
            if self.echoed >= 200:
                self.busy.set()
            return msg

        wrong = WebSocket(self.flask, "/wrong")

        @wrong.on("message")
        def on_wrong(msg: str) -> str:
            return msg + "!"

        room = WebSocket(self.flask, "/broadcast")

        @room.on("message")
        def on_broadcast(ws: Any, msg: str) -> None:
            ws.sync_broadcast(msg)

        # Broadcasts, and drops every other client (1012) after each DROP_EVERY messages;
        # with drop_sender, every client instead of relaying that message, as a restart
        # would (what the sender has in flight then is lost).
        self.resumable: dict[str, Any] = {}
        self.broadcasts = 0
        self.drops = 0
        self.drop_sender = False
        resume = WebSocket(self.flask, "/resume", recovery=True)

        @resume.on("connect")
        def on_resume_connect(ws: Any) -> None:
            self.resumable[ws.id] = ws  # a resumed client has the same id: the new ws

        @resume.on("message")
        def on_resume_message(ws: Any, msg: str) -> None:
            self.broadcasts += 1
            restart = self.drop_sender and self.broadcasts % DROP_EVERY == 0
            if not restart:
                ws.sync_broadcast(msg)
            if self.broadcasts % DROP_EVERY == 0:
                for other in list(self.resumable.values()):
                    if other.id != ws.id or self.drop_sender:
                        other.close(1012, "restart")
                        self.drops += 1

        @resume.on("close")
        def on_resume_close(ws: Any) -> None:
            if self.resumable.get(ws.id) is ws:
                del self.resumable[ws.id]


def figures(options: LoadOptions, **changes: Any) -> dict[str, Any]:
    """Run ``options`` in this process and return every figure, as ``--json`` writes them."""
    for name, value in changes.items():
        setattr(options, name, value)
    summary = summarize(options, [run(options)])
    json.dumps(summary)  # everything must be JSON
    return summary


def geo_ws_load(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m geo_ws load ARGS`` to completion (bounded)."""
    return run_python("-m", "geo_ws", "load", *args, timeout=PROCESS_TIMEOUT)
