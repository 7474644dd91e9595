"""History: what a broker keeps of the messages it carried, so that none is lost.

A **log** is a bounded, ordered history of the messages sent on one stream: each has an
**offset** (1, 2, 3... without holes) under an **epoch**, a random name that changes
when the history itself is lost (a Redis restarted without persistence, a new process
with the in-memory broker). A :class:`Position` names a point in a log; an endpoint with
``recovery=`` lets a client that dropped come back and get what it missed since its
position (see docs/recovery.md).

In Redis the log of a channel ``C`` is three keys: the hash ``C:meta`` (``epoch``,
``offset``, and when it was last trimmed), the stream ``C:log`` (entry ``OFFSET-0``
holds the envelope in field ``e``) and the list ``C:times`` (``MS:OFFSET`` at most once
per second: which offsets are older than the age to keep). :data:`APPEND_SCRIPT`
appends and publishes in one atomic step. No gevent here: the
:class:`~geo_ws.delivery.emitter.Emitter` uses it too.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..protocol.envelope import Envelope, Kind

if TYPE_CHECKING:
    import redis

__all__ = [
    "APPEND_SCRIPT",
    "Entry",
    "HistoryChanged",
    "MemoryLog",
    "Position",
    "Recovery",
    "append_args",
    "log_keys",
    "read_log",
]


@dataclass(frozen=True)
class Recovery:
    """How much an endpoint's log keeps for clients that come back (``recovery=``).

    Args:
        size: entries kept per log; older ones are trimmed first.
        age: seconds an entry is kept, and how long a dropped client may come back.
    """

    size: int = 10_000
    age: float = 300.0

    def __post_init__(self) -> None:
        if self.size < 1 or self.age <= 0:
            raise ValueError(f"recovery needs size >= 1 and age > 0, not {self!r}")


@dataclass(frozen=True)
class Position:
    """A point in a log: everything up to ``offset`` under ``epoch`` was seen."""

    epoch: str
    offset: int


@dataclass(frozen=True)
class Entry:
    """One message of a log, at its offset."""

    offset: int
    envelope: Envelope


class MemoryLog:
    """The log of one endpoint in one process (the :class:`~geo_ws.delivery.broker.MemoryBroker`'s).

    Entries are numbered from 1 under a random epoch (a new process starts a new history)
    and trimmed to the newest ``recovery.size``, none older than ``recovery.age`` seconds.

    Args:
        recovery: how much to keep.
        clock: seconds, monotonic (for tests).
    """

    def __init__(self, recovery: Recovery, clock: Callable[[], float] = time.monotonic) -> None:
        self.recovery = recovery
        self.epoch = uuid.uuid4().hex[:12]
        """This history's name."""
        self.offset = 0
        """The offset of the newest entry (0: none yet)."""
        self._clock = clock
        # time, offset, kind, opcode, endpoint, target, payload
        self._entries: deque[tuple[float, int, Kind, int, str, str, bytes]] = deque(
            maxlen=recovery.size
        )

    def append(self, kind: Kind, opcode: int, endpoint: str, target: str, payload: bytes) -> int:
        """Keep a send as the next entry (the fields of its :class:`Envelope`, made only
        when it is replayed: this is every local send's path).

        Returns:
            Its offset.
        """
        now = self._clock()
        self._trim(now)
        self.offset += 1
        self._entries.append((now, self.offset, kind, opcode, endpoint, target, payload))
        return self.offset

    def top(self) -> Position:
        """The position of the newest entry."""
        return Position(self.epoch, self.offset)

    def replay(self, since: Position) -> list[Entry] | None:
        """The entries after ``since``, in order.

        Returns:
            ``None`` when ``since`` is of another epoch, past the top, or when the log no
            longer holds the entry after it.
        """
        self._trim(self._clock())
        if since.epoch != self.epoch or since.offset > self.offset:
            return None
        first = self._entries[0][1] if self._entries else self.offset + 1
        if since.offset + 1 < first:
            return None
        skip = since.offset + 1 - first
        return [
            Entry(offset, Envelope(kind, opcode, endpoint, target, payload))
            for _, offset, kind, opcode, endpoint, target, payload in itertools.islice(
                self._entries, skip, None
            )
        ]

    def _trim(self, now: float) -> None:
        oldest = now - self.recovery.age
        entries = self._entries
        while entries and entries[0][0] < oldest:
            entries.popleft()


# KEYS: meta, stream, times. ARGV: channel, envelope, size, age in ms (the last two
# empty: what the servers stored in meta, for an Emitter that does not know them).
# Returns how many subscribers the PUBLISH reached.
APPEND_SCRIPT = """
local meta, stream, times = KEYS[1], KEYS[2], KEYS[3]
local m = redis.call('HMGET', meta, 'epoch', 'checked', 'size', 'age')
local size, age = ARGV[3], ARGV[4]
if size == '' then size, age = m[3] or '10000', m[4] or '300000' end
age = tonumber(age)
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local epoch = m[1]
if not epoch then
  epoch = string.format('%x%05x', tonumber(now[1]), tonumber(now[2]))
  redis.call('HSET', meta, 'epoch', epoch)
end
local id = string.format('%d', redis.call('HINCRBY', meta, 'offset', 1))
local added = redis.pcall('XADD', stream, 'MAXLEN', '~', size, id, 'e', ARGV[2])
if type(added) == 'table' and added.err then
  -- a stream left from another history (meta expired): start it afresh
  redis.call('DEL', stream, times)
  redis.call('XADD', stream, 'MAXLEN', '~', size, id, 'e', ARGV[2])
end
local step = math.min(1000, math.floor(age / 10))
if ms - tonumber(m[2] or '0') >= step then
  redis.call('HSET', meta, 'checked', ms, 'size', size, 'age', age)
  redis.call('RPUSH', times, string.format('%d', ms) .. ':' .. id)
  local oldest, keep = ms - age, nil
  while true do
    local later = redis.call('LINDEX', times, 1)
    if not later then break end
    local colon = string.find(later, ':', 1, true)
    if tonumber(string.sub(later, 1, colon - 1)) > oldest then break end
    redis.call('LPOP', times)
    keep = string.sub(later, colon + 1)
  end
  if keep then redis.call('XTRIM', stream, 'MINID', keep) end
  redis.call('PEXPIRE', stream, age + step)
  redis.call('PEXPIRE', times, age + step)
  redis.call('PEXPIRE', meta, age + 86400000)
end
return redis.call('PUBLISH', ARGV[1], epoch .. ':' .. id .. ':' .. ARGV[2])
"""
"""Appends an envelope to a channel's log, trims it, and publishes it tagged."""


class HistoryChanged(Exception):
    """A log's epoch changed while it was read: read it again from its new top."""


def log_keys(channel: str) -> tuple[str, str, str]:
    """The keys of ``channel``'s log: its meta hash, its stream, its list of times."""
    return f"{channel}:meta", f"{channel}:log", f"{channel}:times"


def append_args(channel: str, envelope: bytes, recovery: Recovery | None) -> list[Any]:
    """The arguments of :data:`APPEND_SCRIPT` (``recovery=None``: the log's own)."""
    if recovery is None:
        return [channel, envelope, "", ""]
    return [channel, envelope, recovery.size, int(recovery.age * 1000)]


def read_log(
    client: redis.Redis, channel: str, first: int, last: int | None = None
) -> tuple[Position, list[tuple[int, bytes]]]:
    """The top of ``channel``'s log and its entries from ``first`` to ``last`` (``None``:
    to the top), read in one transaction.

    Returns:
        The top (epoch ``""`` for a log nobody wrote yet) and the ``(offset, envelope)``
        pairs the stream still holds in that range.
    """
    meta, stream, _ = log_keys(channel)
    pipeline = client.pipeline(transaction=True)
    pipeline.hmget(meta, "epoch", "offset")
    pipeline.xrange(stream, str(first), "+" if last is None else str(last))
    (epoch, offset), entries = pipeline.execute()
    top = Position(epoch.decode() if epoch else "", int(offset or 0))
    return top, [(int(key.split(b"-")[0]), fields[b"e"]) for key, fields in entries]
