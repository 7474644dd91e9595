"""geo_ws: a synchronous WebSocket server for Flask on gevent, with Robyn's API.

.. code-block:: python

    from flask import Flask
    from geo_ws import WebSocket

    app = Flask(__name__)
    websocket = WebSocket(app, "/web_socket")

    @websocket.on("message")
    def message(ws, msg):
        ws.sync_broadcast(msg)

Names are imported lazily, so ``import geo_ws.protocol`` stays free of gevent and
Flask.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "WebSocket": "flask.endpoint",
    "WebSocketConnector": "flask.connector",
    "QueryParams": "flask.params",
    "Server": "server.builtin",
    "run": "server.builtin",
    "run_blocking": "io.concurrency",
    "CloseCode": "protocol.frames",
    "DeflateOptions": "protocol.deflate",
    "GeoWS": "flask.extension",
    "browser_client": "flask.browser",
    "ConnectionClosed": "exceptions",
    "ConnectionClosedError": "exceptions",
    "ConnectionClosedOK": "exceptions",
    "HandshakeError": "exceptions",
    "InvalidState": "exceptions",
    "InvalidUTF8": "exceptions",
    "PayloadTooBig": "exceptions",
    "ProtocolError": "exceptions",
    "WebSocketError": "exceptions",
    "Broker": "delivery.broker",
    "MemoryBroker": "delivery.broker",
    "RedisBroker": "delivery.broker",
    "Emitter": "delivery.emitter",
    "Recovery": "delivery.history",
    "PresenceEvent": "delivery.presence",
}

__all__ = [
    "Broker",
    "CloseCode",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "DeflateOptions",
    "GeoWS",
    "Emitter",
    "HandshakeError",
    "InvalidState",
    "InvalidUTF8",
    "MemoryBroker",
    "PayloadTooBig",
    "PresenceEvent",
    "ProtocolError",
    "QueryParams",
    "Recovery",
    "RedisBroker",
    "Server",
    "WebSocket",
    "WebSocketConnector",
    "WebSocketError",
    "__version__",
    "browser_client",
    "run",
    "run_blocking",
]

if TYPE_CHECKING:
    from .delivery.broker import Broker, MemoryBroker, RedisBroker
    from .delivery.emitter import Emitter
    from .delivery.history import Recovery
    from .delivery.presence import PresenceEvent
    from .exceptions import (
        ConnectionClosed,
        ConnectionClosedError,
        ConnectionClosedOK,
        HandshakeError,
        InvalidState,
        InvalidUTF8,
        PayloadTooBig,
        ProtocolError,
        WebSocketError,
    )
    from .flask.browser import browser_client
    from .flask.connector import WebSocketConnector
    from .flask.endpoint import WebSocket
    from .flask.extension import GeoWS
    from .flask.params import QueryParams
    from .io.concurrency import run_blocking
    from .protocol.deflate import DeflateOptions
    from .protocol.frames import CloseCode
    from .server.builtin import Server, run


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'geo_ws' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
