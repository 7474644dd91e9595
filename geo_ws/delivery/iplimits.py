"""Per client address limits, decided at the handshake: how many connections one address
may hold open, and how many handshakes it may make per minute.

A handshake over a limit is refused with HTTP 429 before any 101 (with ``Retry-After``
for the handshake rate, when the oldest handshake of the minute leaves it). With a
:class:`~geo_ws.delivery.broker.RedisBroker` the counts are shared by every worker and
host of the endpoint; with any other broker they are this process's own.

In Redis, each address has two sorted sets, checked and updated by one Lua script
(atomic, on Redis's clock, so hosts' clocks need not agree):

- its open connections: a ticket id per connection, scored with a deadline that this
  process pushes back every ``refresh`` seconds for all its live connections at once
  (one script per interval, not a command per connection). A worker killed with
  SIGKILL releases nothing, but stops refreshing: its tickets expire within
  ``2.5 * refresh`` seconds and no longer count.
- its handshakes of the last 60 s, scored with their time: a sliding window, exact.

If Redis cannot be reached at a handshake, the handshake is admitted (and the error
logged, once per 10 s at most): losing Redis must not lock every client out.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent import Greenlet

from ..exceptions import HandshakeError
from .broker import Broker, RedisBroker, _RateLimitedLog
from .ids import new_id

if TYPE_CHECKING:
    import redis

__all__ = ["SWEEP_AT", "WINDOW", "IPLimits", "RedisIPLimits", "Release", "ip_limits", "no_release"]


WINDOW = 60.0
"""The handshake rate's window, in seconds."""

SWEEP_AT = 1000
"""How many addresses the in-process handshake counts know before the first sweep."""

Release = Callable[[], None]
"""Frees the connection slot a handshake took (idempotent)."""


def _refused_connections(limit: int) -> HandshakeError:
    # No Retry-After: nobody knows when one of the address's connections will close.
    return HandshakeError(429, f"too many connections from this address (limit {limit})")


def _refused_handshakes(limit: int, retry_after: float) -> HandshakeError:
    return HandshakeError(
        429,
        f"too many handshakes from this address (limit {limit} per minute)",
        [("Retry-After", str(max(1, math.ceil(retry_after))))],
    )


class IPLimits:
    """The limits of one endpoint per client address, counted in this process.

    Args:
        max_connections: open connections per address (``None``: no limit).
        max_handshakes_per_minute: handshakes per address in any 60 s (``None``: no
            limit); refused ones do not count.
    """

    def __init__(self, max_connections: int | None, max_handshakes_per_minute: int | None) -> None:
        self.max_connections = max_connections
        self.max_handshakes_per_minute = max_handshakes_per_minute
        self.window = WINDOW
        """The handshake rate's window, in seconds (a minute; tests shorten it)."""
        self._open: dict[str, int] = {}
        self._handshakes: dict[str, deque[float]] = {}
        # The handshakes are swept of quiet addresses when they reach this many: every
        # address ever seen would stay otherwise.
        self._sweep_at = SWEEP_AT

    def admit(self, address: str) -> Release:
        """Count a handshake from ``address`` and take one of its connection slots.

        Returns:
            What frees the slot once the connection is over.

        Raises:
            HandshakeError: 429, the address is over a limit (nothing was counted).
        """
        limit = self.max_connections
        if limit is not None and self._open.get(address, 0) >= limit:
            raise _refused_connections(limit)
        rate = self.max_handshakes_per_minute
        if rate is not None:
            now = time.monotonic()
            times = self._handshakes.setdefault(address, deque())
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) >= rate:
                raise _refused_handshakes(rate, times[0] + self.window - now)
            times.append(now)
            if len(self._handshakes) >= self._sweep_at:
                self._sweep(now)
        if limit is None:
            return no_release
        self._open[address] = self._open.get(address, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                left = self._open.pop(address) - 1
                if left:
                    self._open[address] = left

        return release

    def _sweep(self, now: float) -> None:
        """Forget the addresses without a handshake in the window; sweep again when twice
        as many are known (so each handshake pays a constant share of the sweeps)."""
        quiet = now - self.window
        self._handshakes = {
            address: times for address, times in self._handshakes.items() if times[-1] > quiet
        }
        self._sweep_at = max(SWEEP_AT, 2 * len(self._handshakes))

    def open_count(self, address: str) -> int:
        """How many connections from ``address`` are counted open."""
        return self._open.get(address, 0)


def no_release() -> None:
    """The release of a handshake that took no connection slot: nothing to free."""


# KEYS: connections of the address, handshakes of the address.
# ARGV: max connections (-1: none), max handshakes per window (-1: none), ticket,
# ticket lifetime in ms, window in ms.
# Returns {0} (admitted), {1} (too many connections) or {2, ms until a handshake leaves}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_open = tonumber(ARGV[1])
local max_rate = tonumber(ARGV[2])
local window = tonumber(ARGV[5])
if max_open >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= max_open then return {1} end
end
if max_rate >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  if redis.call('ZCARD', KEYS[2]) >= max_rate then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {2, tonumber(oldest[2]) + window - now}
  end
  redis.call('ZADD', KEYS[2], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[2], window)
end
if max_open >= 0 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return {0}
"""

# KEYS: the connection set of each live ticket; ARGV: lifetime in ms, then the tickets.
_REFRESH = """
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, deadline, ARGV[i + 1])
  redis.call('PEXPIRE', key, ARGV[1])
end
return #KEYS
"""

#: Tickets refreshed per script call: one call must not hold Redis for long.
REFRESH_BATCH = 1000


class RedisIPLimits(IPLimits):
    """:class:`IPLimits` shared by every process of the endpoint through Redis.

    Args:
        max_connections: as :class:`IPLimits`.
        max_handshakes_per_minute: as :class:`IPLimits`.
        client: what gives this process's Redis client (e.g. :meth:`RedisBroker.redis`).
        prefix: the keys' prefix: the broker's namespace and the endpoint.
        refresh: seconds between two refreshes of this process's live tickets; a
            ticket left unrefreshed expires after ``2.5 * refresh``.
    """

    def __init__(
        self,
        max_connections: int | None,
        max_handshakes_per_minute: int | None,
        client: Callable[[], redis.Redis],
        prefix: str,
        refresh: float = 20.0,
    ) -> None:
        super().__init__(max_connections, max_handshakes_per_minute)
        self._client = client
        self.prefix = prefix
        self.refresh = refresh
        self._lifetime_ms = int(refresh * 2500)
        self._live: dict[str, str] = {}  # ticket -> its connection set
        self._refresher: Greenlet[Any, None] | None = None
        self._errors = _RateLimitedLog(logging.ERROR)

    def keys(self, address: str) -> tuple[str, str]:
        """The Redis keys of ``address``: its connections and its handshakes."""
        return f"{self.prefix}:open:{address}", f"{self.prefix}:handshakes:{address}"

    def admit(self, address: str) -> Release:
        """As :meth:`IPLimits.admit`, counted in Redis (admitted if Redis cannot be reached)."""
        import redis

        open_key, handshakes_key = self.keys(address)
        ticket = new_id()
        limit, rate = self.max_connections, self.max_handshakes_per_minute
        try:
            answer = self._client().eval(
                _ADMIT,
                2,
                open_key,
                handshakes_key,
                -1 if limit is None else limit,
                -1 if rate is None else rate,
                ticket,
                self._lifetime_ms,
                int(self.window * 1000),
            )
        except redis.RedisError as error:
            self._errors.log("cannot check the limits of %s in Redis: %s", address, error)
            return no_release
        if answer[0] == 1:
            raise _refused_connections(limit or 0)
        if answer[0] == 2:
            raise _refused_handshakes(rate or 0, answer[1] / 1000)
        if limit is None:
            return no_release
        self._live[ticket] = open_key
        if self._refresher is None:
            self._refresher = gevent.spawn(self._refresh_loop)

        def release() -> None:
            if self._live.pop(ticket, None) is not None:
                try:
                    self._client().zrem(open_key, ticket)
                except redis.RedisError as error:  # it expires by itself
                    self._errors.log("cannot free a connection of %s in Redis: %s", address, error)

        return release

    def open_count(self, address: str) -> int:
        """How many connections from ``address`` are counted open, in every process."""
        open_key = self.keys(address)[0]
        client = self._client()
        client.zremrangebyscore(open_key, "-inf", _redis_now_ms(client))
        count: int = client.zcard(open_key)
        return count

    def _refresh_loop(self) -> None:
        """Push the deadlines of this process's live tickets back, every ``refresh`` s,
        while there are any."""
        import redis

        while self._live:
            gevent.sleep(self.refresh)
            live = list(self._live.items())
            try:
                for start in range(0, len(live), REFRESH_BATCH):
                    batch = live[start : start + REFRESH_BATCH]
                    tickets = [ticket for ticket, _ in batch]
                    keys = [key for _, key in batch]
                    self._client().eval(_REFRESH, len(keys), *keys, self._lifetime_ms, *tickets)
            except redis.RedisError as error:
                self._errors.log("cannot refresh the connections counted in Redis: %s", error)
        self._refresher = None


def _redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def ip_limits(
    max_connections: int | None,
    max_handshakes_per_minute: int | None,
    broker: Broker,
    endpoint: str,
    refresh: float | None,
) -> IPLimits | None:
    """The address limits of an endpoint, in Redis if its broker is a RedisBroker.

    Args:
        max_connections: as :class:`IPLimits`.
        max_handshakes_per_minute: as :class:`IPLimits`.
        broker: the endpoint's broker.
        endpoint: the endpoint's key (its full rule).
        refresh: seconds between refreshes of the live connections in Redis: the
            endpoint's keepalive interval (``None``: 20).

    Returns:
        ``None`` when neither limit is set.
    """
    if max_connections is None and max_handshakes_per_minute is None:
        return None
    if isinstance(broker, RedisBroker):
        return RedisIPLimits(
            max_connections,
            max_handshakes_per_minute,
            broker.redis,
            f"{broker.namespace}:limits:{endpoint}",
            refresh or 20.0,
        )
    return IPLimits(max_connections, max_handshakes_per_minute)
