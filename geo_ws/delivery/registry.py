"""The connections of one endpoint in one process, addressed by id, and their rooms.

On an endpoint with recovery every message has a position in the endpoint's log: a
connection added with a ``framer`` gets each one framed with its offset (the resume
wire), and a held connection (while it resumes) gets them buffered until released.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from ..io.connection import Connection
from ..protocol.outgoing import Outgoing
from .history import Recovery

__all__ = ["Framer", "Registry"]

Framer = Callable[[Outgoing, int], Outgoing]
"""Makes the message a connection gets for a message at an offset of the log."""

logger = logging.getLogger("geo_ws")


class Registry:
    """Which connections an endpoint has in this process, and which rooms they are in.

    Args:
        key: the endpoint's name across processes (its URL rule, e.g. ``/chat/ws``):
            what brokers put in an envelope so that other processes find the same
            endpoint.
        recovery: the endpoint's history for clients that come back, or ``None``: then
            its broker keeps a log of everything sent to it and delivers positioned.
    """

    def __init__(self, key: str = "", recovery: Recovery | None = None) -> None:
        self.key = key
        """The endpoint's name across processes."""
        self.recovery = recovery
        """The endpoint's history (``None``: no recovery)."""
        self._connections: dict[str, Connection] = {}
        self._rooms: dict[str, dict[str, Connection]] = {}
        self._memberships: dict[str, set[str]] = {}
        self._framers: dict[str, Framer] = {}
        self._held: dict[str, list[tuple[int, Outgoing]]] = {}

    def add(
        self, connection_id: str, connection: Connection, *, framer: Framer | None = None
    ) -> None:
        """Register an open connection under its id.

        Args:
            connection_id: its id.
            connection: the connection.
            framer: for positioned deliveries, makes what this connection gets from the
                message and its offset (once per message for all connections with the
                same framer); without one it gets the message as is.
        """
        self._connections[connection_id] = connection
        if framer is not None:
            self._framers[connection_id] = framer

    def remove(self, connection_id: str) -> bool:
        """Unregister a connection and take it out of its rooms.

        Returns:
            ``False`` if it was not registered.
        """
        for room in self._memberships.pop(connection_id, ()):
            self._discard_member(room, connection_id)
        self._framers.pop(connection_id, None)
        self._held.pop(connection_id, None)
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

    def deliver(
        self, message: Outgoing, room: str | None = None, *, offset: int | None = None
    ) -> int:
        """Hand a prepared message to every connection, or to the members of ``room``.

        Never blocks: each connection writes what its socket takes and queues the rest.

        Args:
            message: the message.
            room: only to the members of this room.
            offset: the message's offset in the endpoint's log: then it is a positioned
                delivery (framed, or buffered for held connections).

        Returns:
            How many connections took it (or buffered it).
        """
        targets = self._connections if room is None else self._rooms.get(room, {})
        if offset is None or not (self._framers or self._held):
            return sum(connection.send_outgoing(message) for connection in list(targets.values()))
        return self._positioned(list(targets.items()), message, offset)

    def deliver_to(self, connection_id: str, message: Outgoing, offset: int) -> bool:
        """Hand a positioned message to one connection (a ``send_to`` from the log).

        Returns:
            Whether the connection was there to take it.
        """
        connection = self._connections.get(connection_id)
        if connection is None:
            return False
        return bool(self._positioned(((connection_id, connection),), message, offset))

    def _positioned(
        self, targets: Iterable[tuple[str, Connection]], message: Outgoing, offset: int
    ) -> int:
        framed: dict[Framer, Outgoing] = {}  # one framed message per framer, shared
        taken = 0
        for connection_id, connection in targets:
            held = self._held.get(connection_id)
            if held is not None:
                held.append((offset, message))
                taken += 1
                continue
            framer = self._framers.get(connection_id)
            if framer is None:
                taken += connection.send_outgoing(message)
                continue
            copy = framed.get(framer)
            if copy is None:
                copy = framed[framer] = framer(message, offset)
            taken += connection.send_outgoing(copy)
        return taken

    # -- resuming ------------------------------------------------------------------------

    def hold(self, connection_id: str) -> None:
        """Buffer the positioned deliveries for this connection from now on, instead of
        sending them (while what it missed is replayed to it)."""
        self._held.setdefault(connection_id, [])

    def release(self, connection_id: str, after: int) -> int:
        """Send what was buffered for this connection past offset ``after`` (what the
        replay did not cover), in order, then deliver to it directly again.

        Returns:
            How many buffered messages it was sent.
        """
        held = self._held.pop(connection_id, None)
        connection = self._connections.get(connection_id)
        if not held or connection is None:
            return 0
        framer = self._framers.get(connection_id)
        sent = 0
        for offset, message in held:
            if offset > after:
                sent += connection.send_outgoing(
                    message if framer is None else framer(message, offset)
                )
        return sent
