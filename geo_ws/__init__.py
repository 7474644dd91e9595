"""geo_ws: a synchronous WebSocket server for Flask on gevent, with Robyn's API.

.. code-block:: python

    from flask import Flask
    from geo_ws import WebSocket

    app = Flask(__name__)
    websocket = WebSocket(app, "/web_socket")

    @websocket.on("message")
    def message(ws, msg):
        ws.sync_broadcast(msg)
        return ""

Names are imported lazily, so ``import geo_ws.protocol`` stays free of gevent and
Flask.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "WebSocket": "websocket",
    "WebSocketConnector": "websocket",
    "QueryParams": "params",
    "Server": "server",
    "run": "server",
    "run_blocking": "concurrency",
    "CloseCode": "frames",
    "DeflateOptions": "deflate",
    "GeoWS": "extension",
    "ConnectionClosed": "exceptions",
    "ConnectionClosedError": "exceptions",
    "ConnectionClosedOK": "exceptions",
    "HandshakeError": "exceptions",
    "InvalidState": "exceptions",
    "InvalidUTF8": "exceptions",
    "PayloadTooBig": "exceptions",
    "ProtocolError": "exceptions",
    "WebSocketError": "exceptions",
    "Broker": "broker",
    "MemoryBroker": "broker",
    "RedisBroker": "broker",
    "Emitter": "emitter",
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
    "ProtocolError",
    "QueryParams",
    "RedisBroker",
    "Server",
    "WebSocket",
    "WebSocketConnector",
    "WebSocketError",
    "__version__",
    "run",
    "run_blocking",
]

if TYPE_CHECKING:
    from .broker import Broker, MemoryBroker, RedisBroker
    from .concurrency import run_blocking
    from .deflate import DeflateOptions
    from .emitter import Emitter
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
    from .extension import GeoWS
    from .frames import CloseCode
    from .params import QueryParams
    from .server import Server, run
    from .websocket import WebSocket, WebSocketConnector


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'geo_ws' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
