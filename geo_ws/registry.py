"""The connections of one endpoint in one process, addressed by id."""

from __future__ import annotations

import itertools
import logging
import os
import uuid
from collections.abc import Iterator

from .connection import Connection, Outgoing

__all__ = ["Registry", "new_id"]

logger = logging.getLogger("geo_ws")

_counter = itertools.count(1)
_node = ("", 0)


def new_id() -> str:
    """Return a connection id unique across processes and hosts: ``NODE.N``.

    ``NODE`` is random per process (drawn again after a fork, so workers forked from
    one master differ) and says which process holds the connection.
    """
    global _node
    if _node[1] != os.getpid():
        _node = (uuid.uuid4().hex[:16], os.getpid())
    return f"{_node[0]}.{next(_counter)}"


class Registry:
    """Which connections an endpoint has, for ``send_to`` and ``broadcast``."""

    def __init__(self) -> None:
        self._connections: dict[str, Connection] = {}

    def add(self, connection_id: str, connection: Connection) -> None:
        """Register an open connection under its id."""
        self._connections[connection_id] = connection

    def remove(self, connection_id: str) -> bool:
        """Unregister a connection; ``False`` if it was not registered."""
        return self._connections.pop(connection_id, None) is not None

    def get(self, connection_id: str) -> Connection | None:
        """The connection with this id, or ``None``."""
        return self._connections.get(connection_id)

    def __contains__(self, connection_id: object) -> bool:
        return connection_id in self._connections

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._connections))

    def send_to(self, connection_id: str, data: str | bytes | bytearray | memoryview) -> bool:
        """Send one message to one connection; a missing id is a no-op (logged at debug).

        Returns:
            Whether the connection was there to take it.
        """
        connection = self._connections.get(connection_id)
        if connection is None:
            logger.debug("send_to %s: no such connection here", connection_id)
            return False
        return connection.send(data)

    def broadcast(self, data: str | bytes | bytearray | memoryview) -> int:
        """Send one message to every connection; its frame is encoded once.

        Returns:
            How many connections took it.
        """
        message = Outgoing(data)
        return sum(
            connection.send_outgoing(message) for connection in list(self._connections.values())
        )
