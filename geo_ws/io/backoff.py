"""Delays between reconnection attempts: exponential, capped, and jittered.

When Redis restarts, or a deploy restarts the servers, every process (every client)
loses its connection at the same moment. With the same fixed sequence of delays they
would all come back at the same moments too, again and again: a reconnect storm that
can keep a recovering server down. Jitter draws each delay at random below the
exponential one, so the attempts spread out.

Which jitter (after "Exponential Backoff And Jitter", Marc Brooker, AWS Architecture
Blog, 2015, which simulated both against many competing clients):

- ``"full"``, the default: uniform between 0 and the exponential delay. The fewest
  attempts in total and the quickest recovery of the three; sometimes a retry comes
  almost at once, which costs one connection attempt.
- ``"equal"``: the upper half only, between half the delay and the delay. A little
  more load than full jitter, but never a retry sooner than half the delay: for a
  client that must not hammer a server that refuses it.
- ``None``: the exponential delays themselves, for a single client or a test.

No I/O: :meth:`Backoff.next` says how long to wait; the caller sleeps.
"""

from __future__ import annotations

import random
from typing import Literal

__all__ = ["Backoff", "Jitter"]

Jitter = Literal["full", "equal"]
"""How :class:`Backoff` draws a delay below the exponential one."""


class Backoff:
    """The delays between the attempts of one connection: ``first``, then ``factor``
    times longer after each failure up to ``cap``, jittered; back to ``first`` after a
    success (:meth:`reset`).

    Args:
        first: the delay after the first failure, in seconds (before jitter).
        cap: the longest delay, in seconds (before jitter).
        factor: how much longer each next delay is.
        jitter: ``"full"``, ``"equal"`` or ``None`` (see the module's docstring).
        rng: where random numbers come from (default: the :mod:`random` module, seeded
            again in a forked child, so that workers forked from one master do not draw
            the same delays).

    Raises:
        ValueError: ``first`` is not positive, ``cap`` is less than ``first``,
            ``factor`` is less than 1, or ``jitter`` is unknown.
    """

    def __init__(
        self,
        first: float = 0.1,
        cap: float = 5.0,
        *,
        factor: float = 2.0,
        jitter: Jitter | None = "full",
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"need 0 < first <= cap, not first={first}, cap={cap}")
        if factor < 1:
            raise ValueError(f"factor {factor} would shorten the delays")
        if jitter not in ("full", "equal", None):
            raise ValueError(f"unknown jitter {jitter!r}: use 'full', 'equal' or None")
        self.first = first
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._random = random.random if rng is None else rng.random
        self._delay = first

    def next(self) -> float:
        """Return how long to wait after a failure, and lengthen the next delay.

        Returns:
            Seconds: ``first * factor ** failures`` capped at ``cap``, and drawn from
            ``[0, that]`` (full jitter) or ``[that / 2, that]`` (equal jitter).
        """
        delay = self._delay
        self._delay = min(self.cap, delay * self.factor)
        if self.jitter == "full":
            return delay * self._random()
        if self.jitter == "equal":
            return delay / 2 * (1 + self._random())
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits ``first`` again."""
        self._delay = self.first
