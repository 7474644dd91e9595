"""The server's side of resume: a client of a recovery endpoint says who it was, gets its
id and rooms back, then what it missed, then the live stream (docs/recovery.md).

:class:`Resumption` runs the first exchange for one connection that picked the
subprotocol :data:`~geo_ws.protocol.resume.SUBPROTOCOL`, and keeps its session in step
with its rooms. :class:`~geo_ws.flask.connector.WebSocketConnector` calls it at the
points its docstrings name.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from ..delivery.broker import Broker
from ..delivery.history import Entry, Position, Recovery
from ..delivery.ids import new_id
from ..delivery.registry import Registry
from ..delivery.sessions import Session, Sessions, new_session_id, sessions_for
from ..exceptions import ConnectionClosed
from ..io.connection import Connection
from ..protocol.envelope import Kind
from ..protocol.frames import parse_close
from ..protocol.resume import Hello, Resume, ResumeError, Start, parse_first, positioned

__all__ = ["FIRST_MESSAGE_TIMEOUT", "Resumption", "as_recovery", "sessions_of"]

logger = logging.getLogger("geo_ws")

FIRST_MESSAGE_TIMEOUT = 10.0
"""Seconds a resuming client has to send its first message (start or resume)."""

# Each (broker, endpoint key)'s sessions store, made on first use.
_sessions: dict[tuple[int, str], Sessions] = {}


def as_recovery(value: Any) -> Recovery | None:
    """The ``recovery=`` setting as a :class:`~geo_ws.delivery.history.Recovery`.

    Args:
        value: ``True`` (the defaults), a ``Recovery``, or ``None`` / ``False`` (off).

    Raises:
        ValueError: anything else.
    """
    if value is True:
        return Recovery()
    if value is None or value is False:
        return None
    if isinstance(value, Recovery):
        return value
    raise ValueError(f"recovery must be True, a Recovery, None or False, not {value!r}")


def sessions_of(broker: Broker, registry: Registry) -> Sessions:
    """The sessions of a recovery endpoint, kept where its broker keeps its log."""
    recovery = registry.recovery
    assert recovery is not None
    key = (id(broker), registry.key)
    sessions = _sessions.get(key)
    if sessions is None or sessions.age != recovery.age:
        sessions = _sessions[key] = sessions_for(broker, registry.key, recovery.age)
    return sessions


class Resumption:
    """One resuming connection's session: the first exchange, then its upkeep.

    Args:
        broker: the endpoint's broker (log and sessions).
        registry: the endpoint's registry here.
        connection: the connection, open, nothing sent on it yet.
    """

    def __init__(self, broker: Broker, registry: Registry, connection: Connection) -> None:
        self._broker = broker
        self._registry = registry
        self._connection = connection
        self._sessions = sessions_of(broker, registry)
        self._owner = secrets.token_hex(8)  # this connection, as the session's owner
        self._sid = ""
        self.id = ""
        """The connection's id: restored, or new."""
        self.resumed = False
        self.recovered = False
        self._replay: list[Entry] = []
        self._after = 0  # what release() skips: the replay covers it
        self._pending = False  # the replay waits to be released
        self._dropped = False

    def start(self) -> bool:
        """Read the client's first message, restore or make its session, register the
        connection (held), and send the hello.

        Returns:
            ``False`` if the client sent no valid first message (then the connection is
            closed with 1002, 1003 or 1008), or if its session or the log could not be
            read (Redis down: closed with 1013, try again later). No handler may run then.
        """
        connection = self._connection
        try:
            first = parse_first(connection.receive_or_closed(FIRST_MESSAGE_TIMEOUT))
        except ResumeError as exc:
            connection.close(exc.code, str(exc))
            return False
        except TimeoutError:
            connection.close(1008, "no start or resume message in time")
            return False
        except ConnectionClosed:
            connection.close(connection.echo_code, "")
            return False
        try:
            hello = self._restore(first)
        except Exception:
            logger.exception("could not resume a client of WebSocket %s", self._registry.key)
            if self._registry.get(self.id) is connection:
                self._registry.remove(self.id)
            self._sessions.untrack(self._sid, self._owner)
            connection.close(1013, "cannot resume now: try again later")
            return False
        connection.send(hello.encode())
        self._pending = True
        return True

    def _restore(self, first: Start | Resume) -> Hello:
        """Restore the session (or make one), register the connection (held), and find
        what it missed.

        Returns:
            The hello to send.
        """
        session = None
        if isinstance(first, Resume):
            session = self._sessions.claim(first.session, self._owner)
            self._sid = first.session
        if session is None:
            self._sid, self.id, rooms = new_session_id(), new_id(), frozenset[str]()
        else:
            self.id, rooms = session.id, session.rooms
            self.resumed = True
        registry = self._registry
        older = registry.get(self.id)
        if older is not None:  # the same session, still open here (half-open TCP)
            registry.remove(self.id)
            older.request_close(1008, "session resumed elsewhere")
        registry.add(self.id, self._connection, framer=positioned)
        registry.hold(self.id)
        for room in rooms:
            registry.join(self.id, room)
        self.save()
        top = self._broker.top(registry.key)
        self._after = top.offset
        missed: int | None = 0
        if isinstance(first, Resume):
            # Epoch "": the log was empty at the client's first hello; its offsets are of
            # the epoch the log took with its first entry.
            epoch = first.epoch or top.epoch
            missed = self._prepare_replay(Position(epoch, first.offset), top, rooms)
        return Hello(
            self.id, self._sid, top.epoch, top.offset, self.resumed, self.recovered, missed
        )

    def _prepare_replay(self, since: Position, top: Position, rooms: frozenset[str]) -> int | None:
        """Find what the client missed since ``since``.

        Returns:
            How many messages it missed; ``None`` if they are not all in the log any more.
        """
        if not self.resumed:
            return None
        entries = self._broker.replay(self._registry.key, since)
        if entries is None:
            return None
        self.recovered = True
        self._after = max(top.offset, entries[-1].offset if entries else since.offset)
        self._replay = [entry for entry in entries if self._concerns(entry, rooms)]
        return len(self._replay)

    def _concerns(self, entry: Entry, rooms: frozenset[str]) -> bool:
        """Whether this client got the entry: broadcasts, its rooms, sends to its id."""
        envelope = entry.envelope
        kind = envelope.kind
        if kind is Kind.BROADCAST:
            return True
        if kind is Kind.ROOM:
            return envelope.target in rooms
        return envelope.target == self.id

    def release(self) -> None:
        """Send the replay, then what came meanwhile, then go live (once; a no-op after)."""
        if not self._pending:
            return
        self._pending = False
        replay, self._replay = self._replay, []
        connection = self._connection
        for entry in replay:
            envelope = entry.envelope
            if envelope.kind is Kind.CLOSE:  # closed by the app while away
                code, reason = parse_close(envelope.payload)
                connection.request_close(code, reason)
                return
            connection.send_outgoing(positioned(envelope.outgoing(), entry.offset))
        self._registry.release(self.id, self._after)

    def _session(self) -> Session:
        return Session(self.id, self._registry.rooms_of(self.id), self._owner)

    def save(self) -> None:
        """Write the session as it is now (after a join or leave)."""
        if self._dropped:
            return
        session = self._session()
        if self._sessions.save(self._sid, session):
            self._sessions.track(self._sid, session, self._lost)

    def dropped(self, rooms: frozenset[str], *, write: bool = True) -> None:
        """The connection is over: keep its session ``age`` seconds from now.

        Args:
            rooms: the rooms it was in.
            write: write the session (no I/O when ``False``: the process is stopping,
                the last write stands).
        """
        if self._dropped or not self._sid:
            return
        self._dropped = True
        self._sessions.untrack(self._sid, self._owner)
        if write:
            try:
                self._sessions.save(self._sid, Session(self.id, rooms, self._owner))
            except Exception:
                logger.warning("could not keep the session of %s", self.id, exc_info=True)

    def _lost(self) -> None:
        """Another connection resumed this session: this one is stale (half-open)."""
        if self._registry.get(self.id) is self._connection:
            self._registry.remove(self.id)
        self._connection.request_close(1008, "session resumed elsewhere")
