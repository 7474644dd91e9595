"""Rooms on an endpoint in one process: join, leave, room broadcasts, leaving on close."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from flask import Flask
from gevent.event import Event

from geo_ws.flask.connector import WebSocketConnector
from geo_ws.flask.endpoint import WebSocket
from tests.helpers import WAIT, RawClient

Serve = Callable[[Any], str]  # the serve fixture of conftest.py


def rooms_app() -> tuple[Flask, WebSocket, Event]:
    """``/rooms/<room>`` joins its room on connect and answers with ``ws.rooms``.

    Messages: ``say TEXT`` and ``async TEXT`` broadcast to the room (sync and async),
    ``leave`` leaves it, ``join ROOM`` joins another. The returned event is set when a
    close handler has run.
    """
    app = Flask(__name__)
    endpoint = WebSocket(app, "/rooms/<room>")
    closed = Event()

    @endpoint.on("connect")
    def connect(ws: WebSocketConnector) -> list[str]:
        ws.join(ws.path_params["room"])
        ws.join(ws.path_params["room"])  # twice: still one membership
        return sorted(ws.rooms)

    @endpoint.on("message")
    async def message(ws: WebSocketConnector, msg: str) -> Any:
        verb, _, text = msg.partition(" ")
        room = ws.path_params["room"]
        if verb == "say":
            ws.sync_broadcast(text, room=room)
        elif verb == "async":
            await ws.async_broadcast(text, room=room)
        elif verb == "leave":
            ws.leave(room)
            ws.leave(room)  # not in it any more: a no-op
            return sorted(ws.rooms)
        elif verb == "join":
            ws.join(text)
            return sorted(ws.rooms)
        return None

    @endpoint.on("close")
    def close() -> None:
        closed.set()

    return app, endpoint, closed


def test_room_broadcasts_reach_members_only_and_closing_leaves_every_room(serve: Serve) -> None:
    app, endpoint, closed = rooms_app()
    address = serve(app)
    red1, red2, blue = (RawClient(address, f"/rooms/{room}") for room in ("red", "red", "blue"))
    assert [json.loads(client.recv()) for client in (red1, red2, blue)] == [["red"]] * 2 + [
        ["blue"]
    ]

    def everyone_next_is(message: str) -> None:
        """Broadcast a marker from outside: what each client got before it came first."""
        assert endpoint.sync_broadcast(message) == 3
        assert [client.recv() for client in (red1, red2, blue)] == [message] * 3

    red1.send_text("say hello red")
    assert [red1.recv(), red2.recv()] == ["hello red"] * 2
    red2.send_text("async from a coroutine")
    assert [red1.recv(), red2.recv()] == ["from a coroutine"] * 2
    everyone_next_is("marker 1")  # blue got neither
    # From outside any handler, sync and async.
    assert endpoint.sync_broadcast("blue only", room="blue") == 1
    assert asyncio.run(endpoint.async_broadcast(b"red bytes", room="red")) == 2
    assert blue.recv() == "blue only"
    assert [red1.recv(), red2.recv()] == [b"red bytes"] * 2
    red2.send_text("leave")
    assert json.loads(red2.recv()) == []
    red1.send_text("say only me now")
    assert red1.recv() == "only me now"
    everyone_next_is("marker 2")
    blue.send_text("join red")
    assert json.loads(blue.recv()) == ["blue", "red"]
    blue.send_close(1000)
    assert blue.recv_close().code == 1000
    assert closed.wait(WAIT)
    # Its close handler has run: it is in no room any more.
    assert endpoint.sync_broadcast("anyone in blue?", room="blue") == 0
    assert endpoint.sync_broadcast("red now", room="red") == 1
    assert red1.recv() == "red now"
