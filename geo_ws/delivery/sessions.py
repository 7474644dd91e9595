"""Sessions: who a resuming client was (its id and rooms), kept for a while after it drops.

A client of an endpoint with ``recovery=`` gets a private session (see
docs/recovery.md). While it is connected its process keeps the session alive; once it
drops, the session lives ``recovery.age`` seconds more, so that the client can come back
with the same id and rooms, on any process that sees the same store.

- :class:`MemorySessions`: one process (with the :class:`~geo_ws.delivery.broker.MemoryBroker`).
- :class:`RedisSessions`: key ``NS:session:<sid>`` in Redis (with the
  :class:`~geo_ws.delivery.broker.RedisBroker`), expiring ``age`` seconds after the last
  refresh; a process refreshes the sessions of its connections every ``age / 3``.

Each session has one **owner**, the connection that holds it now: a client that resumes
on another connection takes it over, and the old connection (half-open, say) is told
so (:meth:`Sessions.track`'s callback) and closed by its owner.
"""

from __future__ import annotations

import heapq
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent

from .broker import Broker, RedisBroker

if TYPE_CHECKING:
    import redis

__all__ = ["MemorySessions", "RedisSessions", "Session", "Sessions", "sessions_for"]

logger = logging.getLogger("geo_ws")

# Write a session only if nobody else took it over; return 0 when someone did.
_SAVE = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['owner'] ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""
# Keep a session alive if it is still ours (write it again if Redis lost it); 0 when
# another connection took it over.
_REFRESH = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['owner'] ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""
# Take a session over: its record as it was, or nil.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if not current then return nil end
local session = cjson.decode(current)
session['owner'] = ARGV[1]
redis.call('SET', KEYS[1], cjson.encode(session), 'PX', ARGV[2])
return current
"""


@dataclass(frozen=True)
class Session:
    """What a session keeps: the connection's id and rooms, and which connection owns it."""

    id: str
    rooms: frozenset[str]
    owner: str


def new_session_id() -> str:
    """A new private session id: 256 random bits, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


class Sessions:
    """The sessions of one endpoint; see the module's docstring.

    Args:
        endpoint: the endpoint's key (sessions of other endpoints are not found).
        age: seconds a session lives after its connection drops.
    """

    def __init__(self, endpoint: str, age: float) -> None:
        self.endpoint = endpoint
        self.age = age
        # The sessions of this process's open connections: owner and what to tell it.
        self._live: dict[str, tuple[Session, Callable[[], None]]] = {}

    def claim(self, sid: str, owner: str) -> Session | None:
        """Take the session ``sid`` over for the connection ``owner``.

        Returns:
            The session as it was (its ``owner`` the previous one), or ``None`` if there
            is no such session of this endpoint (never made, or expired).
        """
        raise NotImplementedError

    def save(self, sid: str, session: Session) -> bool:
        """Write the session (after a join or leave, or when its connection drops);
        its life starts again: ``age`` seconds.

        Returns:
            ``False``, having written nothing, if another owner took it over.
        """
        raise NotImplementedError

    def track(self, sid: str, session: Session, lost: Callable[[], None]) -> None:
        """Keep the session alive while its connection is open (:meth:`save` it
        first; again after a change); ``lost()`` runs (in a greenlet of its own) if
        another connection takes it over."""
        self._live[sid] = (session, lost)

    def untrack(self, sid: str, owner: str) -> None:
        """The connection ``owner`` dropped: stop keeping its session alive (it then
        lives ``age`` seconds from its last :meth:`save`)."""
        found = self._live.get(sid)
        if found is not None and found[0].owner == owner:
            del self._live[sid]

    def _tell_lost(self, sid: str, owner: str) -> None:
        """The session ``sid`` belongs to ``owner`` now: tell its live owner here if that
        is another connection."""
        found = self._live.get(sid)
        if found is not None and found[0].owner != owner:
            del self._live[sid]
            gevent.spawn(found[1])


class MemorySessions(Sessions):
    """Sessions in this process's memory."""

    def __init__(self, endpoint: str, age: float) -> None:
        super().__init__(endpoint, age)
        self._sessions: dict[str, tuple[Session, float]] = {}
        self._expiries: list[tuple[float, str]] = []  # a heap of (deadline, sid)

    def claim(self, sid: str, owner: str) -> Session | None:
        self._expire()
        found = self._sessions.get(sid)
        if found is None:
            return None
        session, deadline = found
        self._sessions[sid] = (Session(session.id, session.rooms, owner), deadline)
        self._tell_lost(sid, owner)
        return session

    def save(self, sid: str, session: Session) -> bool:
        self._expire()
        found = self._sessions.get(sid)
        if found is not None and found[0].owner != session.owner:
            return False
        deadline = time.monotonic() + self.age
        self._sessions[sid] = (session, deadline)
        heapq.heappush(self._expiries, (deadline, sid))
        return True

    def untrack(self, sid: str, owner: str) -> None:
        tracked = sid in self._live
        super().untrack(sid, owner)
        found = self._sessions.get(sid)
        if tracked and sid not in self._live and found is not None:
            self.save(sid, found[0])  # its window starts now

    def _expire(self) -> None:
        """Forget the sessions past their deadline (and not alive since)."""
        now = time.monotonic()
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            deadline, sid = heapq.heappop(expiries)
            found = self._sessions.get(sid)
            if found is not None and found[1] == deadline and sid not in self._live:
                del self._sessions[sid]

    def __len__(self) -> int:
        return len(self._sessions)


class RedisSessions(Sessions):
    """Sessions in Redis, shared by every process on the same Redis and namespace.

    Args:
        broker: the endpoint's broker; its client runs the commands.
        endpoint: as :class:`Sessions`.
        age: as :class:`Sessions`.
    """

    def __init__(self, broker: RedisBroker, endpoint: str, age: float) -> None:
        super().__init__(endpoint, age)
        self._broker = broker
        self._refresher: gevent.Greenlet[Any, None] | None = None

    @property
    def _ms(self) -> int:
        return int(self.age * 1000)

    def _key(self, sid: str) -> str:
        return f"{self._broker.namespace}:session:{sid}"

    @property
    def _redis(self) -> redis.Redis:
        return self._broker.redis()

    def claim(self, sid: str, owner: str) -> Session | None:
        raw = self._redis.eval(_CLAIM, 1, self._key(sid), owner, self._ms)
        if raw is None:
            return None
        record = json.loads(raw)
        if record.get("endpoint") != self.endpoint:
            return None
        self._tell_lost(sid, owner)  # at once if the old owner is here
        return Session(record["id"], frozenset(record["rooms"]), record["owner"])

    def _record(self, session: Session) -> str:
        return json.dumps(
            {
                "id": session.id,
                "endpoint": self.endpoint,
                "rooms": sorted(session.rooms),
                "owner": session.owner,
            }
        )

    def save(self, sid: str, session: Session) -> bool:
        record = self._record(session)
        written = self._redis.eval(_SAVE, 1, self._key(sid), record, session.owner, self._ms)
        return bool(written)

    def track(self, sid: str, session: Session, lost: Callable[[], None]) -> None:
        super().track(sid, session, lost)
        if self._refresher is None:
            self._refresher = gevent.spawn(self._refresh_loop)

    def _refresh_loop(self) -> None:
        """Every ``age / 3``: keep the live sessions alive, tell those taken over."""
        while True:
            gevent.sleep(self.age / 3)
            try:
                self.refresh()
            except Exception:  # Redis down: the next round tries again
                logger.warning("could not refresh the resume sessions in Redis", exc_info=True)

    def refresh(self) -> None:
        """Refresh every live session now (one round trip); tell those taken over."""
        live = list(self._live.items())
        if not live:
            return
        with self._redis.pipeline(transaction=False) as pipe:
            for sid, (session, _) in live:
                record = self._record(session)
                pipe.eval(_REFRESH, 1, self._key(sid), record, session.owner, self._ms)
            results: Iterable[int] = pipe.execute()
        for (sid, (session, lost)), kept in zip(live, results, strict=True):
            if not kept and self._live.get(sid) == (session, lost):
                del self._live[sid]
                gevent.spawn(lost)


def sessions_for(broker: Broker, endpoint: str, age: float) -> Sessions:
    """The sessions store that goes with ``broker``: in Redis for a
    :class:`~geo_ws.delivery.broker.RedisBroker`, else in this process's memory."""
    if isinstance(broker, RedisBroker):
        return RedisSessions(broker, endpoint, age)
    return MemorySessions(endpoint, age)
