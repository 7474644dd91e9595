"""Test clients: websocket-client for ordinary use, a raw client for protocol edges."""

from __future__ import annotations

import base64
import os
import socket

import gevent
import websocket
from hypothesis import settings

from geo_ws.protocol.frames import Opcode, encode_close, encode_frame
from geo_ws.protocol.machine import Close, Event, Message, Ping, Protocol

#: The longest any single wait of a test may take, in seconds.
WAIT = 5.0

#: Hypothesis settings of the suite: bounded, and no example database in the checkout.
QUICK = settings(max_examples=200, deadline=None, database=None)

#: A client masking key for frames built by hand.
MASK = b"\x37\xfa\x21\x3d"

#: Clients opened by the current test; the ``serve`` fixture closes them before the servers.
OPEN_CLIENTS: list[websocket.WebSocket | RawClient] = []


def connect(address: str, path: str, **options: object) -> websocket.WebSocket:
    """Open a websocket-client connection to ``ws://address/path`` (closed after the test)."""
    client = websocket.create_connection(f"ws://{address}{path}", timeout=WAIT, **options)
    OPEN_CLIENTS.append(client)
    return client


def close_clients() -> None:
    """Close every client the test opened, so servers shut down without waiting."""
    while OPEN_CLIENTS:
        client = OPEN_CLIENTS.pop()
        try:
            if isinstance(client, RawClient):
                client.close()
            else:
                client.close(timeout=1)
        except OSError:
            pass


class RawClient:
    """A WebSocket client over a plain socket that can send anything, malformed frames too.

    It parses what the server sends with geo_ws's own protocol in client mode.
    """

    def __init__(self, address: str, path: str, headers: dict[str, str] | None = None) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=WAIT)
        OPEN_CLIENTS.append(self)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {address}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1]) if head else 0
        self.response_head = head.decode("latin-1")
        self.protocol = Protocol(client=True, max_message_size=None)
        self._events: list[Event] = list(self.protocol.receive_data(rest)) if rest else []

    def send_frame(
        self, opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True
    ) -> None:
        """Send one frame, masked like a well-behaved client unless ``masked`` is False."""
        frame = encode_frame(opcode, payload, fin=fin, mask=os.urandom(4) if masked else None)
        self.sock.sendall(frame)

    def send_text(self, text: str) -> None:
        """Send a text message."""
        self.send_frame(Opcode.TEXT, text.encode())

    def send_close(self, code: int | None = 1000, reason: str = "") -> None:
        """Send a Close frame."""
        self.send_frame(Opcode.CLOSE, encode_close(code, reason))

    def recv_event(self, timeout: float = WAIT) -> Event:
        """Return the next event from the server (a ``Close(1006)`` on EOF)."""
        with gevent.Timeout(timeout):
            while not self._events:
                data = self.sock.recv(65536)
                self._events += (
                    self.protocol.receive_eof() if not data else self.protocol.receive_data(data)
                )
        return self._events.pop(0)

    def recv(self, timeout: float = WAIT, *, skip_pings: bool = False) -> str | bytes:
        """Return the next message; fails the test on anything else (but the server's
        keepalive pings with ``skip_pings``, for clients that live long)."""
        event = self.recv_event(timeout)
        while skip_pings and isinstance(event, Ping):
            event = self.recv_event(timeout)
        assert isinstance(event, Message), event
        return event.data

    def recv_close(self, timeout: float = WAIT) -> Close:
        """Skip messages until the server's Close and return it."""
        while True:
            event = self.recv_event(timeout)
            if isinstance(event, Close):
                return event

    def at_eof(self, timeout: float = WAIT) -> bool:
        """Whether the server closes TCP within ``timeout`` (reading what is left)."""
        with gevent.Timeout(timeout, False):
            while self.sock.recv(65536):
                pass
            return True
        return False

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def http_get(address: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """GET ``path`` on ``address``: the status and the body, error statuses included."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://{address}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
