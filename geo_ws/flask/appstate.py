"""geo_ws's state in a Flask app: its endpoints' registries, brokers and dependencies."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask
from werkzeug.routing import Rule

from ..delivery.broker import Broker, get_broker
from ..delivery.registry import Registry

if TYPE_CHECKING:
    from .direct import DirectEndpoint
    from .endpoint import WebSocket

__all__ = ["AppState", "Handler", "app_state"]


@dataclass(frozen=True)
class Handler:
    """A handler and the names it asked for, inspected once at registration."""

    fn: Callable[..., Any]
    params: tuple[str, ...]


@dataclass
class AppState:
    """geo_ws's state in one Flask app, kept in ``app.extensions["geo_ws"]``."""

    global_dependencies: dict[str, Any] = field(default_factory=dict)
    registries: dict[WebSocket, Registry] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    """The app's config, read when a broker is chosen."""
    brokers: dict[WebSocket, Broker] = field(default_factory=dict)
    direct: dict[str, tuple[DirectEndpoint, Rule]] | None = None
    """The paths :func:`~geo_ws.flask.direct.direct_lane` serves, made at the first handshake."""

    def broker(self, endpoint: WebSocket) -> Broker:
        """The endpoint's broker, chosen on first use (the app's config may come late).

        The endpoint's ``broker=``, else the app's ``GEO_WS_BROKER_URL``, else the
        environment's, else a :class:`~geo_ws.delivery.broker.MemoryBroker`.
        """
        broker = self.brokers.get(endpoint)
        if broker is None:
            broker = get_broker(
                endpoint._broker_option
                or self.config.get("GEO_WS_BROKER_URL")
                or os.environ.get("GEO_WS_BROKER_URL")
            )
            broker.attach(self.registries[endpoint])
            self.brokers[endpoint] = broker
        return broker


def app_state(app: Flask) -> AppState:
    """geo_ws's state in ``app``, made on first use."""
    state: AppState | None = app.extensions.get("geo_ws")
    if state is None:
        state = app.extensions["geo_ws"] = AppState(config=app.config)
    return state
