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
        arguments (every kind of connection is made with the same ones)."""
        return {
            "max_message_size": self.max_message_size,
            "max_outbox_size": self.max_outbox_size,
            "close_timeout": self.close_timeout,
            "ping_interval": self.ping_interval,
            "ping_timeout": self.ping_timeout,
        }

    @classmethod
    def resolve(cls, explicit: Mapping[str, Any], config: Mapping[str, Any]) -> Options:
        """Each setting from ``explicit``, else ``config["GEO_WS_<NAME>"]``, else its default.

        Raises:
            ValueError: ``compression`` is not ``"deflate"``, ``DeflateOptions`` or ``None``.
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
        return cls(**values)
