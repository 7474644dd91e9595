"""The examples do what their docstrings and Robyn's WebSocket chapter say."""

from __future__ import annotations

import json
import signal
import socket
import urllib.request
from collections.abc import Callable
from typing import Any

import gevent
import websocket

import examples.chat  # monkey-patches at import: harmless, conftest.py did it already
import examples.robyn_tour
from tests.helpers import WAIT, RawClient
from tests.live_apps.process import START_TIMEOUT, ServerProcess

Serve = Callable[[Any], str]  # the serve fixture of conftest.py

tour = examples.robyn_tour.app
chat = examples.chat.app

#: What the tour's ``GET /`` lists: one endpoint per snippet of Robyn's chapter.
ROBYN_TOUR_ENDPOINTS = [
    "/web_socket",
    "/sync_send_to",
    "/async_send_to",
    "/sync_broadcast",
    "/async_broadcast",
    "/query?name=gordon&desg=commissioner",
    "/close",
]


def get(address: str, path: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=WAIT) as response:
        return response.status, response.headers.get_content_type(), response.read()


def assert_no_message(client: RawClient, endpoint_reply: str = "") -> None:
    """Nothing is waiting for ``client``: a probe message's reply comes next."""
    client.send_text("probe")
    assert client.recv() == endpoint_reply


# -- examples/robyn_tour.py ------------------------------------------------------------


def test_tour_index_lists_the_endpoints(serve: Serve) -> None:
    status, content_type, body = get(serve(tour), "/")
    assert status == 200
    assert content_type == "application/json"
    assert json.loads(body)["websockets"] == ROBYN_TOUR_ENDPOINTS


def test_tour_web_socket_connect_message_close(serve: Serve) -> None:
    client = RawClient(serve(tour), "/web_socket")
    try:
        assert client.status == 101
        assert client.recv() == "Connected to ws"
        client.send_text("Hello")
        assert client.recv() == "Hello world, from ws"
        client.send_text("again")
        assert client.recv() == "Hello world, from ws"
        client.send_close(1000)
        # The close handler's return value arrives before the server's Close.
        assert client.recv() == "Goodbye world, from ws"
        assert client.recv_close().code == 1000
        assert client.at_eof()
    finally:
        client.close()


def test_tour_web_socket_with_websocket_client(serve: Serve) -> None:
    ws = websocket.create_connection(f"ws://{serve(tour)}/web_socket", timeout=WAIT)
    try:
        assert ws.recv() == "Connected to ws"
        ws.send("Hello")
        assert ws.recv() == "Hello world, from ws"
    finally:
        ws.close()


def check_send_to_self(address: str, path: str) -> None:
    client = RawClient(address, path)
    try:
        assert client.status == 101
        for text in ("first", "second"):
            client.send_text(text)
            assert client.recv() == "This is a message to self"
            assert client.recv() == ""  # the handler's return value, an empty text frame
    finally:
        client.close()


def test_tour_sync_send_to(serve: Serve) -> None:
    check_send_to_self(serve(tour), "/sync_send_to")


def test_tour_async_send_to(serve: Serve) -> None:
    check_send_to_self(serve(tour), "/async_send_to")


def check_broadcast(address: str, path: str) -> None:
    sender, other = RawClient(address, path), RawClient(address, path)
    try:
        assert sender.status == other.status == 101
        sender.send_text("Hello")
        assert sender.recv() == "This is a message to self"
        assert sender.recv() == ""
        assert other.recv() == "This is a message to self"
        # The other client got the broadcast only, not the sender's "".
        other.send_text("Hello")
        assert other.recv() == "This is a message to self"
        assert other.recv() == ""
        assert sender.recv() == "This is a message to self"
    finally:
        sender.close()
        other.close()


def test_tour_sync_broadcast(serve: Serve) -> None:
    check_broadcast(serve(tour), "/sync_broadcast")


def test_tour_async_broadcast(serve: Serve) -> None:
    check_broadcast(serve(tour), "/async_broadcast")


def test_tour_query_params_authorize_a_broadcast(serve: Serve) -> None:
    address = serve(tour)
    gordon = RawClient(address, "/query?name=gordon&desg=commissioner")
    anonymous = RawClient(address, "/query")
    try:
        for text in ("login", "again"):
            gordon.send_text(text)
            assert gordon.recv() == "Gordon authorized to login!"
            assert gordon.recv() == ""
            assert anonymous.recv() == "Gordon authorized to login!"
        # Without the parameters, a message broadcasts nothing: only "" comes back.
        anonymous.send_text("login")
        assert anonymous.recv() == ""
        assert_no_message(anonymous)
        # Gordon got nothing from it: his next message's broadcast comes, then his "".
        gordon.send_text("last")
        assert gordon.recv() == "Gordon authorized to login!"
        assert gordon.recv() == ""
        assert anonymous.recv() == "Gordon authorized to login!"
    finally:
        gordon.close()
        anonymous.close()


def test_tour_query_without_params_sends_only_empty_replies(serve: Serve) -> None:
    address = serve(tour)
    for path in ("/query", "/query?name=gordon", "/query?name=bruce&desg=commissioner"):
        client = RawClient(address, path)
        try:
            for _ in range(2):
                client.send_text("login")
                assert client.recv() == ""
        finally:
            client.close()


def test_tour_close_endpoint(serve: Serve) -> None:
    client = RawClient(serve(tour), "/close")
    try:
        client.send_text("hello")
        assert client.recv() == "Message received"
        client.send_text("disconnect")
        assert client.recv() == "Closing connection"
        assert client.recv_close().code == 1000
        client.send_close(1000)
        assert client.at_eof()
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, server: ServerProcess) -> None:
    """Wait (bounded) until the port accepts; the script logs nothing at INFO."""
    deadline = gevent.get_hub().loop.now() + START_TIMEOUT
    while True:
        assert server.proc.poll() is None, server.stderr.finish()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert gevent.get_hub().loop.now() < deadline, "the example never listened"
            gevent.sleep(0.05)


def test_tour_script_serves_on_its_port() -> None:
    port = free_port()
    with ServerProcess("examples/robyn_tour.py", "--port", str(port)) as server:
        wait_listening(port, server)
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/web_socket", timeout=WAIT)
        try:
            assert ws.recv() == "Connected to ws"
            ws.send("Hello")
            assert ws.recv() == "Hello world, from ws"
        finally:
            ws.close()
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0


# -- examples/chat.py ------------------------------------------------------------------


def test_chat_page(serve: Serve) -> None:
    address = serve(chat)
    status, content_type, body = get(address, "/")
    assert status == 200
    assert content_type == "text/html"
    assert b'import { GeoSocket } from "/geo_ws/geo_ws.js";' in body
    assert b"new GeoSocket(`/chat/ws?name=" in body
    status, content_type, _ = get(address, "/geo_ws/geo_ws.js")
    assert (status, content_type) == (200, "text/javascript")


def test_chat_room(serve: Serve) -> None:
    address = serve(chat)
    online: dict[websocket.WebSocket, list[list[str]]] = {}

    def join(name: str) -> websocket.WebSocket:
        ws = websocket.create_connection(f"ws://{address}/chat/ws?name={name}", timeout=WAIT)
        online[ws] = []
        return ws

    def recv(ws: websocket.WebSocket) -> object:
        """The next message but the lists of who is online, kept in ``online``."""
        while (message := json.loads(ws.recv())).get("event") == "online":
            online[ws].append(message["names"])
        return message

    alice = join("alice")
    bob = None
    try:
        assert recv(alice) == {"event": "join", "name": "alice"}
        bob = join("bob")
        assert recv(bob) == {"event": "join", "name": "bob"}
        assert recv(alice) == {"event": "join", "name": "bob"}
        alice.send("hi")
        assert recv(alice) == {"from": "alice", "text": "hi"}
        assert recv(bob) == {"from": "alice", "text": "hi"}
        bob.close()
        assert recv(alice) == {"event": "leave", "name": "bob"}
        alice.send("alone")
        assert recv(alice) == {"from": "alice", "text": "alone"}
        assert online[alice] == [["alice"], ["alice", "bob"], ["alice"]]
        assert online[bob] == [["alice", "bob"]]
    finally:
        alice.close()
        if bob is not None:
            bob.close()


def test_chat_anonymous_name(serve: Serve) -> None:
    ws = websocket.create_connection(f"ws://{serve(chat)}/chat/ws", timeout=WAIT)
    try:
        assert json.loads(ws.recv()) == {"event": "join", "name": "anonymous"}
    finally:
        ws.close()
