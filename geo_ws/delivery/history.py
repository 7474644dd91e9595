"""History: what a broker keeps of the messages it carried, so that none is lost.

A **log** is a bounded, ordered history of the messages sent on one stream: each has an
**offset** (1, 2, 3... without holes) under an **epoch**, a random name that changes
when the history itself is lost (a Redis restarted without persistence, a new process
with the in-memory broker). A :class:`Position` names a point in a log; an endpoint with
``recovery=`` lets a client that dropped come back and get what it missed since its
position (see docs/recovery.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.envelope import Envelope

__all__ = ["Entry", "Position", "Recovery"]


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
