"""An endpoint's settings: what was passed to ``WebSocket(...)``, else the app's
``GEO_WS_*`` config, else geo_ws's defaults.

So a setting can be chosen once per app (``app.config["GEO_WS_PING_INTERVAL"] = 10``)
and still be overridden per endpoint.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ..protocol.deflate import DeflateOptions
from .ratelimit import RateLimit

__all__ = ["UNSET", "Options"]


class _Unset:
    """The default of a ``WebSocket(...)`` setting that was not passed."""

    def __repr__(self) -> str:
        return "<from app config or default>"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Options:
    """The settings of one endpoint in one app (see :class:`geo_ws.WebSocket`)."""

    max_message_size: int | None = 2**20
    max_outbox_size: int = 16 * 2**20
    close_timeout: float = 5.0
    ping_interval: float | None = 20.0
    ping_timeout: float = 20.0
    allowed_origins: Collection[str | None] | None = None
    subprotocols: Sequence[str] = ()
    max_connections: int | None = None
    compression: DeflateOptions | None = None
    # True, a geo_ws.Recovery, or None/False: read by geo_ws.flask (a layer above).
    recovery: Any = None
    # Limits (see docs/deployment.md, "Limits"): all off by default.
    max_messages_per_second: float | None = None
    max_bytes_per_second: float | None = None
    rate_limit_burst: float = 1.0
    rate_limit_action: str = "close"
    max_connections_per_ip: int | None = None
    max_handshakes_per_ip_per_minute: int | None = None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The setting names; ``GEO_WS_`` + the name in capitals is the config key."""
        return tuple(field.name for field in fields(cls))

    @classmethod
    def defaults(cls) -> tuple[Any, ...]:
        """geo_ws's default of each setting, in the order of :meth:`names`."""
        return tuple(field.default for field in fields(cls))

    def connection_settings(self) -> dict[str, Any]:
        """The settings a :class:`~geo_ws.io.connection.Connection` takes, as its keyword
        arguments (every kind of connection is made with the same ones). The rate limit,
        if any, is a new one each time: one call per connection."""
        limit = RateLimit(
            self.max_messages_per_second,
            self.max_bytes_per_second,
            self.rate_limit_burst,
            self.rate_limit_action,
        )
        return {
            "max_message_size": self.max_message_size,
            "max_outbox_size": self.max_outbox_size,
            "close_timeout": self.close_timeout,
            "ping_interval": self.ping_interval,
            "ping_timeout": self.ping_timeout,
            "rate_limit": limit if limit.limits else None,
        }

    @classmethod
    def resolve(cls, explicit: Mapping[str, Any], config: Mapping[str, Any]) -> Options:
        """Each setting from ``explicit``, else ``config["GEO_WS_<NAME>"]``, else its default.

        Raises:
            ValueError: ``compression`` is not ``"deflate"``, ``DeflateOptions`` or ``None``,
                or a rate limit setting is not valid.
        """
        values = {
            field.name: explicit[field.name]
            if field.name in explicit
            else config.get("GEO_WS_" + field.name.upper(), field.default)
            for field in fields(cls)
        }
        compression = values["compression"]
        if compression == "deflate":
            values["compression"] = DeflateOptions()
        elif compression is not None and not isinstance(compression, DeflateOptions):
            raise ValueError(
                f"compression must be 'deflate', DeflateOptions or None, not {compression!r}"
            )
        options = cls(**values)
        options.connection_settings()  # a bad rate limit fails here, not at a handshake
        return options
