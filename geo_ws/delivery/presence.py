"""Presence: who is connected to an endpoint or a room, in every process and host.

A connection appears once the app gives it a small JSON-able dict (a user name, an
avatar): ``ws.set_presence({"name": ...})``. Presence maps connection ids to those
dicts, per endpoint and per room (a present connection is present in the rooms it
joins), and says who came and went:

- ``join``: a connection became present in a scope (an endpoint, or one of its rooms);
- ``update``: a present connection was given another dict;
- ``leave``: it closed, left the room, or its process vanished (its entries expired).

Each event is told exactly once across processes, by the process that saw it: the
one holding the connection, or, for entries that expired (a SIGKILLed worker), the
first one to write or read that scope afterwards (for up to ten times the entries'
time to live: a scope nobody touches for that long is forgotten silently).

- :class:`MemoryPresence` goes with the :class:`~geo_ws.delivery.broker.MemoryBroker`:
  one process, plain dictionaries.
- :class:`RedisPresence` goes with the :class:`~geo_ws.delivery.broker.RedisBroker`:
  per scope a sorted set (id -> expiry time) and a hash (id -> the dict as JSON), in
  the shape of Centrifugo's presence. Each process re-adds its own entries every half
  interval (the endpoints' ping interval) and an entry expires 1.5 intervals after it
  was last written: a crashed process's clients leave presence within 1.5 intervals,
  with no one to tell. Reads skip expired entries, and the scripts that write and read
  a scope remove them. Expiry times come from the writers' clocks: keep the hosts'
  clocks in sync (NTP) to well under an interval.
"""

from __future__ import annotations

import json
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import gevent
from gevent import Greenlet

from .broker import Broker, RedisBroker

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

__all__ = [
    "DEFAULT_INTERVAL",
    "MemoryPresence",
    "Presence",
    "PresenceEvent",
    "RedisPresence",
    "presence_for",
]

logger = logging.getLogger("geo_ws")

DEFAULT_INTERVAL = 20.0
"""The refresh interval of endpoints that send no keepalive pings, in seconds."""

Info = dict[str, Any]
Change = Literal["join", "update", "leave"]
Notify = Callable[["PresenceEvent"], None]


@dataclass(frozen=True)
class PresenceEvent:
    """A connection came into, changed in, or went out of an endpoint's or a room's presence."""

    kind: Change
    """What happened."""
    endpoint: str
    """The endpoint's name across processes (its full URL rule)."""
    room: str | None
    """The room, or ``None`` for the endpoint's presence."""
    connection_id: str
    """The connection."""
    info: Info | None
    """Its dict (``None`` for a ``leave``)."""


class Presence:
    """Who is present, per endpoint and room; the base of the in-memory and Redis kinds.

    A scope is a room of an endpoint, ``None`` standing for the endpoint itself.
    """

    def __init__(self) -> None:
        self._notify: dict[str, Notify] = {}
        self.interval = DEFAULT_INTERVAL
        """Seconds between two refreshes of this process's entries, times two."""

    def attach(self, endpoint: str, interval: float | None, notify: Notify) -> None:
        """Tell ``notify`` the events of ``endpoint``, whose pings come every ``interval``
        seconds (``None``: none); the shortest interval attached is used."""
        self._notify[endpoint] = notify
        if interval is not None:
            self.interval = min(self.interval, interval)

    def _tell(self, kind: Change, endpoint: str, room: str, ids: Iterable[Any], info: Any) -> None:
        """Run the endpoint's hook for each id (``room`` ``""``: the endpoint's presence)."""
        notify = self._notify.get(endpoint)
        if notify is None:
            return
        for connection_id in ids:
            if isinstance(connection_id, bytes):
                connection_id = connection_id.decode()
            event = PresenceEvent(kind, endpoint, room or None, connection_id, info)
            try:
                notify(event)
            except Exception:
                logger.exception("the presence hook of %s failed on %s", endpoint, event)

    def add(
        self,
        endpoint: str,
        connection_id: str,
        info: Mapping[str, Any],
        rooms: Iterable[str | None],
    ) -> None:
        """Make a connection of this process present in each of ``rooms`` (``None``: the
        endpoint) with ``info``, or give it ``info`` where it is present already."""
        self._add(endpoint, connection_id, dict(info), [room or "" for room in rooms])

    def discard(self, endpoint: str, connection_id: str, rooms: Iterable[str | None]) -> None:
        """Take a connection of this process out of each of ``rooms`` (``None``: the endpoint)."""
        self._discard(endpoint, connection_id, [room or "" for room in rooms])

    def members(self, endpoint: str, room: str | None = None) -> dict[str, Info]:
        """The present connections of ``endpoint`` (or of its ``room``): id -> dict."""
        return self._members(endpoint, room or "")

    def count(self, endpoint: str, room: str | None = None) -> int:
        """How many connections :meth:`members` would return, more cheaply."""
        return self._count(endpoint, room or "")

    # What a kind implements; a scope's room is "" for the endpoint itself.

    def _add(self, endpoint: str, connection_id: str, info: Info, rooms: list[str]) -> None:
        raise NotImplementedError

    def _discard(self, endpoint: str, connection_id: str, rooms: list[str]) -> None:
        raise NotImplementedError

    def _members(self, endpoint: str, room: str) -> dict[str, Info]:
        raise NotImplementedError

    def _count(self, endpoint: str, room: str) -> int:
        raise NotImplementedError


class MemoryPresence(Presence):
    """Presence within one process (with the :class:`~geo_ws.delivery.broker.MemoryBroker`)."""

    def __init__(self) -> None:
        super().__init__()
        self._scopes: dict[tuple[str, str], dict[str, Info]] = {}

    def _add(self, endpoint: str, connection_id: str, info: Info, rooms: list[str]) -> None:
        for room in rooms:
            members = self._scopes.setdefault((endpoint, room), {})
            kind: Change = "update" if connection_id in members else "join"
            members[connection_id] = info
            self._tell(kind, endpoint, room, [connection_id], dict(info))

    def _discard(self, endpoint: str, connection_id: str, rooms: list[str]) -> None:
        for room in rooms:
            if not _pop_member(self._scopes, (endpoint, room), connection_id):
                continue
            self._tell("leave", endpoint, room, [connection_id], None)

    def _members(self, endpoint: str, room: str) -> dict[str, Info]:
        members = self._scopes.get((endpoint, room), {})
        return {connection_id: dict(info) for connection_id, info in members.items()}

    def _count(self, endpoint: str, room: str) -> int:
        return len(self._scopes.get((endpoint, room), ()))


# The scripts of one scope. KEYS[1]: the sorted set id -> expiry (Unix seconds),
# KEYS[2]: the hash id -> info; ARGV[1]: now. Each first drops what expired and returns
# those ids last, for the caller to tell their leave (exactly once: scripts are atomic).
_EXPIRE = """
local now = tonumber(ARGV[1])
local expired = redis.call('zrangebyscore', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('zremrangebyscore', KEYS[1], '-inf', now)
  for _, id in ipairs(expired) do redis.call('hdel', KEYS[2], id) end
end
"""
# ARGV[2]: seconds to live, ARGV[3..]: id, info, id, info... Returns {joined, updated,
# expired}: "updated" are the ids that were present with another info. The ids written
# are set to expire before the clean-up, so that a late refresh does not lose them. The
# keys live ten times longer than the entries: whoever touches the scope meanwhile
# tells the leaves of expired entries; after that, nobody wanted to know.
_ADD = (
    """
local ttl = tonumber(ARGV[2])
local now = tonumber(ARGV[1])
local joined, updated = {}, {}
for i = 3, #ARGV, 2 do
  local id, info = ARGV[i], ARGV[i + 1]
  local expiry = tonumber(redis.call('zscore', KEYS[1], id) or '0')
  if expiry <= now then
    joined[#joined + 1] = id
  elseif redis.call('hget', KEYS[2], id) ~= info then
    updated[#updated + 1] = id
  end
  redis.call('zadd', KEYS[1], now + ttl, id)
  redis.call('hset', KEYS[2], id, info)
end
local keep = math.ceil(ttl * 10000)
redis.call('pexpire', KEYS[1], keep)
redis.call('pexpire', KEYS[2], keep)
"""
    + _EXPIRE
    + "return {joined, updated, expired}"
)
# ARGV[2..]: ids. Returns {left, expired}.
_DISCARD = (
    _EXPIRE
    + """
local left = {}
for i = 2, #ARGV do
  if redis.call('zrem', KEYS[1], ARGV[i]) == 1 then left[#left + 1] = ARGV[i] end
  redis.call('hdel', KEYS[2], ARGV[i])
end
return {left, expired}
"""
)
_MEMBERS = _EXPIRE + "return {redis.call('hgetall', KEYS[2]), expired}"
_COUNT = _EXPIRE + "return {redis.call('hlen', KEYS[2]), expired}"


class RedisPresence(Presence):
    """Presence across processes and hosts, in the Redis of a
    :class:`~geo_ws.delivery.broker.RedisBroker` (its :meth:`~RedisBroker.redis` client).

    Writes and reads are one script call each (a round trip); the refresh of all of this
    process's entries is one pipelined round trip per half interval. If Redis cannot be
    reached, :meth:`add` and :meth:`discard` log a warning and the next refresh writes
    this process's entries again (late joins are told then); reads raise
    :class:`redis.RedisError`. After Redis lost its data, the next refresh writes the
    entries again and tells their joins again: it cannot tell a loss from a late refresh.

    Args:
        broker: the broker whose Redis and namespace to use; keys are
            ``NAMESPACE:presence:ENDPOINT`` (plus ``#ROOM`` for a room) for the sorted
            set, and the same under ``NAMESPACE:presence-info:`` for the hash.
    """

    def __init__(self, broker: RedisBroker) -> None:
        super().__init__()
        self.broker = broker
        self._scripts: dict[str, Script] = {}
        self._reset()

    def _reset(self) -> None:
        """Start afresh in this process (again after a fork: the entries were the parent's)."""
        self._pid = os.getpid()
        # What this process refreshes: (endpoint, room) -> id -> info as JSON.
        self._local: dict[tuple[str, str], dict[str, str]] = {}
        self._refresher: Greenlet[Any, None] | None = None

    def _redis(self) -> redis.Redis:
        """This process's client (forgetting a parent's entries after a fork)."""
        if self._pid != os.getpid():
            self._reset()
        return self.broker.redis()

    def _script(self, source: str) -> Script:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.broker.redis().register_script(source)
        return script

    def _keys(self, endpoint: str, room: str) -> list[str]:
        scope = f"{endpoint}#{room}" if room else endpoint  # a URL rule has no "#"
        namespace = self.broker.namespace
        return [f"{namespace}:presence:{scope}", f"{namespace}:presence-info:{scope}"]

    @property
    def ttl(self) -> float:
        """Seconds an entry lives after it was last written: 1.5 intervals."""
        return 1.5 * self.interval

    def _call(self, source: str, endpoint: str, room: str, *args: Any) -> Any:
        """Run a scope's script; tell the leaves of what expired; return the rest."""
        script = self._script(source)
        keys, argv = self._keys(endpoint, room), [time.time(), *args]
        # This process's client: the one the script was registered with may be a parent's.
        *result, expired = script(keys, argv, client=self._redis())
        self._tell("leave", endpoint, room, expired, None)
        return result[0]

    def _add(self, endpoint: str, connection_id: str, info: Info, rooms: list[str]) -> None:
        from redis import RedisError

        self._redis()
        encoded = json.dumps(info, separators=(",", ":"), sort_keys=True)
        scopes = []
        for room in rooms:
            self._local.setdefault((endpoint, room), {})[connection_id] = encoded
            scopes.append(((endpoint, room), {connection_id: encoded}))
        if self._refresher is None:
            self._refresher = gevent.spawn(self._refresh_loop)
        try:
            self._write(scopes)
        except RedisError as error:
            logger.warning(
                "presence: cannot add %s (%s): the next refresh will", connection_id, error
            )

    def refresh(self) -> None:
        """Write this process's entries again, in one pipelined round trip.

        Raises:
            redis.RedisError: Redis could not be reached.
        """
        self._redis()
        self._write([(scope, dict(entries)) for scope, entries in self._local.items()])

    def _write(self, scopes: list[tuple[tuple[str, str], dict[str, str]]]) -> None:
        """Write (or refresh) entries, id -> info as JSON, of scopes; tell what changed."""
        pipeline = self.broker.redis().pipeline(transaction=False)
        script = self._script(_ADD)
        now = time.time()
        for (endpoint, room), entries in scopes:
            pairs = [item for entry in entries.items() for item in entry]
            script(self._keys(endpoint, room), [now, self.ttl, *pairs], client=pipeline)
        for ((endpoint, room), entries), (joined, updated, expired) in zip(
            scopes, pipeline.execute(), strict=True
        ):
            self._tell("leave", endpoint, room, expired, None)
            changes: tuple[tuple[Change, list[bytes]], ...] = (
                ("join", joined),
                ("update", updated),
            )
            for kind, ids in changes:
                for connection_id in ids:
                    info = json.loads(entries[connection_id.decode()])
                    self._tell(kind, endpoint, room, [connection_id], info)

    def _discard(self, endpoint: str, connection_id: str, rooms: list[str]) -> None:
        from redis import RedisError

        self._redis()
        for room in rooms:
            if not _pop_member(self._local, (endpoint, room), connection_id):
                continue
            try:
                left = self._call(_DISCARD, endpoint, room, connection_id)
            except RedisError as error:
                logger.warning("presence: cannot remove %s (%s): it expires", connection_id, error)
                continue
            self._tell("leave", endpoint, room, left, None)

    def _members(self, endpoint: str, room: str) -> dict[str, Info]:
        flat = self._call(_MEMBERS, endpoint, room)
        return {flat[i].decode(): json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}

    def _count(self, endpoint: str, room: str) -> int:
        return int(self._call(_COUNT, endpoint, room))

    def _refresh_loop(self) -> None:
        """The refresher greenlet: every half interval, :meth:`refresh`."""
        from redis import RedisError

        failing = False
        while True:
            gevent.sleep(self.interval / 2)
            try:
                self.refresh()
            except RedisError as error:
                if not failing:
                    logger.warning("presence: cannot refresh in Redis (%s): retrying", error)
                failing = True
            except Exception:
                logger.exception("presence: the refresh failed")
            else:
                failing = False

    def stop(self) -> None:
        """Stop refreshing (the entries then expire)."""
        if self._refresher is not None:
            self._refresher.kill(block=True, timeout=2)
            self._refresher = None


_by_broker: weakref.WeakKeyDictionary[Broker, Presence] = weakref.WeakKeyDictionary()


def presence_for(broker: Broker) -> Presence:
    """The presence that goes with ``broker``: one per broker and process.

    :class:`RedisPresence` with a :class:`~geo_ws.delivery.broker.RedisBroker`, else
    :class:`MemoryPresence`.
    """
    presence = _by_broker.get(broker)
    if presence is None:
        kind = RedisPresence(broker) if isinstance(broker, RedisBroker) else MemoryPresence()
        presence = _by_broker[broker] = kind
    return presence


def _pop_member(
    scopes: dict[tuple[str, str], dict[str, Any]], scope: tuple[str, str], member: str
) -> bool:
    """Take ``member`` out of ``scope`` (forgetting the scope once empty).

    Returns:
        Whether it was there.
    """
    members = scopes.get(scope)
    if members is None or members.pop(member, None) is None:
        return False
    if not members:
        del scopes[scope]
    return True
