"""History: what a broker keeps of the messages it carried, so that none is lost.

A **log** is a bounded, ordered history of the messages sent on one stream: each has an
**offset** (1, 2, 3... without holes) under an **epoch**, a random name that changes
when the history itself is lost (a Redis restarted without persistence, a new process
with the in-memory broker). A :class:`Position` names a point in a log; an endpoint with
``recovery=`` lets a client that dropped come back and get what it missed since its
position (see docs/recovery.md).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol.envelope import Envelope

__all__ = ["Entry", "MemoryLog", "Position", "Recovery"]


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
        self._entries: deque[tuple[float, Entry]] = deque(maxlen=recovery.size)

    def append(self, envelope: Envelope) -> int:
        """Keep ``envelope`` as the next entry.

        Returns:
            Its offset.
        """
        now = self._clock()
        self._trim(now)
        self.offset += 1
        self._entries.append((now, Entry(self.offset, envelope)))
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
        first = self._entries[0][1].offset if self._entries else self.offset + 1
        if since.offset + 1 < first:
            return None
        skip = since.offset + 1 - first
        return [entry for _, entry in itertools.islice(self._entries, skip, None)]

    def _trim(self, now: float) -> None:
        oldest = now - self.recovery.age
        entries = self._entries
        while entries and entries[0][0] < oldest:
            entries.popleft()
