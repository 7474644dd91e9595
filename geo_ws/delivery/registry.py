"""The connections of one endpoint in one process, addressed by id, and their rooms."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from ..io.connection import Connection
from ..protocol.outgoing import Outgoing

__all__ = ["Registry"]

logger = logging.getLogger("geo_ws")


class Registry:
    """Which connections an endpoint has in this process, and which rooms they are in.

    Args:
        key: the endpoint's name across processes (its URL rule, e.g. ``/chat/ws``):
            what brokers put in an envelope so that other processes find the same
            endpoint.
    """

    def __init__(self, key: str = "") -> None:
        self.key = key
        """The endpoint's name across processes."""
        self._connections: dict[str, Connection] = {}
        self._rooms: dict[str, dict[str, Connection]] = {}
        self._memberships: dict[str, set[str]] = {}

    def add(self, connection_id: str, connection: Connection) -> None:
        """Register an open connection under its id."""
        self._connections[connection_id] = connection

    def remove(self, connection_id: str) -> bool:
        """Unregister a connection and take it out of its rooms.

        Returns:
            ``False`` if it was not registered.
        """
        for room in self._memberships.pop(connection_id, ()):
            self._discard_member(room, connection_id)
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

    def connections(self) -> list[Connection]:
        """The registered connections."""
        return list(self._connections.values())

    # -- rooms ---------------------------------------------------------------------------

    def join(self, connection_id: str, room: str) -> bool:
        """Put a registered connection in ``room`` (joining twice is a no-op).

        Returns:
            ``False`` if the connection is not registered (then nothing changes).
        """
        connection = self._connections.get(connection_id)
        if connection is None:
            return False
        self._rooms.setdefault(room, {})[connection_id] = connection
        self._memberships.setdefault(connection_id, set()).add(room)
        return True

    def leave(self, connection_id: str, room: str) -> bool:
        """Take a connection out of ``room``.

        Returns:
            ``False`` if it was not in the room.
        """
        rooms = self._memberships.get(connection_id)
        if rooms is None or room not in rooms:
            return False
        rooms.discard(room)
        if not rooms:
            del self._memberships[connection_id]
        self._discard_member(room, connection_id)
        return True

    def _discard_member(self, room: str, connection_id: str) -> None:
        members = self._rooms.get(room)
        if members is not None:
            members.pop(connection_id, None)
            if not members:
                del self._rooms[room]  # empty rooms cost nothing

    def rooms_of(self, connection_id: str) -> frozenset[str]:
        """The rooms a connection is in."""
        return frozenset(self._memberships.get(connection_id, ()))

    def members(self, room: str) -> list[str]:
        """The ids of the connections in ``room``, in this process."""
        return list(self._rooms.get(room, ()))

    # -- sending -------------------------------------------------------------------------

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

    def broadcast(self, data: str | bytes | bytearray | memoryview, room: str | None = None) -> int:
        """Send one message to every connection, or to the members of ``room``.

        The frame is encoded once for all of them.

        Returns:
            How many connections took it.
        """
        return self.deliver(Outgoing(data), room)

    def deliver(self, message: Outgoing, room: str | None = None) -> int:
        """Hand a prepared message to every connection, or to the members of ``room``.

        Never blocks: each connection writes what its socket takes and queues the rest.

        Returns:
            How many connections took it.
        """
        targets = self._connections if room is None else self._rooms.get(room, {})
        return sum(connection.send_outgoing(message) for connection in list(targets.values()))
