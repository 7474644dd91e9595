"""Per-connection rate limits: how many messages, and bytes, a client may send per second.

Each limit is a token bucket: it holds up to ``burst`` seconds' worth of the rate, fills at
the rate, and each message takes one token (or its size in bytes). A client that was
quiet may send a burst at once; one that keeps sending gets the rate, on average, over
any period. A message larger than the whole byte bucket is let through when the
bucket is full and leaves it in debt, so that a long message is slowed down, never
refused for ever.

Checking a message costs a clock read and a few arithmetic operations per bucket: it
runs for every message received, on the connection's own greenlet.
"""

from __future__ import annotations

import logging
import time

__all__ = ["RATE_LIMIT_ACTIONS", "RateLimit", "TokenBucket"]

logger = logging.getLogger("geo_ws")

RATE_LIMIT_ACTIONS = ("close", "drop")
"""What happens to a message over a limit: the connection is closed with 1008, or the
message is dropped (and a warning logged, once per :data:`WARN_INTERVAL` at most)."""

WARN_INTERVAL = 10.0
"""Seconds between two warnings about the messages one connection had dropped."""


class TokenBucket:
    """A rate with a burst.

    Args:
        rate: tokens added per second.
        burst: seconds' worth of ``rate`` the bucket holds; it starts full.
    """

    __slots__ = ("_last", "_tokens", "capacity", "rate")

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"a rate limit needs a positive rate and burst, not {rate}, {burst}")
        self.rate = rate
        """Tokens added per second."""
        self.capacity = rate * burst
        """The most tokens the bucket holds."""
        self._tokens = self.capacity
        self._last = time.monotonic()

    def take(self, cost: float, now: float) -> bool:
        """Take ``cost`` tokens if there are enough (or the bucket is full), at time ``now``
        (:func:`time.monotonic`).

        Returns:
            Whether they were taken; if not, the bucket is unchanged but for its filling.
        """
        tokens = self._tokens + (now - self._last) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        self._last = now
        # A cost beyond the capacity passes on a full bucket, which it leaves in debt.
        if tokens >= cost or tokens >= self.capacity:
            self._tokens = tokens - cost
            return True
        self._tokens = tokens
        return False


class RateLimit:
    """The rate limits of one connection, checked for each message it receives.

    Args:
        messages_per_second: messages per second, on average (``None``: no limit).
        bytes_per_second: bytes of messages per second, on average (``None``: no
            limit); text counts its UTF-8 size.
        burst: seconds' worth of each rate a client may send at once after a pause.
        action: ``"close"``: a message over a limit closes the connection with 1008
            "rate limit exceeded"; ``"drop"``: it is dropped, and the connection goes on.

    Raises:
        ValueError: ``action`` is neither, or a rate or the burst is not positive.
    """

    __slots__ = ("_bytes", "_messages", "_next_warning", "close", "dropped")

    def __init__(
        self,
        messages_per_second: float | None,
        bytes_per_second: float | None,
        burst: float = 1.0,
        action: str = "close",
    ) -> None:
        if action not in RATE_LIMIT_ACTIONS:
            raise ValueError(f"rate_limit_action must be 'close' or 'drop', not {action!r}")
        self._messages = (
            None if messages_per_second is None else TokenBucket(messages_per_second, burst)
        )
        self._bytes = None if bytes_per_second is None else TokenBucket(bytes_per_second, burst)
        self.close = action == "close"
        """Whether a message over a limit closes the connection (else it is dropped)."""
        self.dropped = 0
        """How many messages were dropped so far."""
        self._next_warning = 0.0

    @property
    def limits(self) -> bool:
        """Whether any rate is limited (else there is nothing to check)."""
        return self._messages is not None or self._bytes is not None

    def admit(self, data: str | bytes) -> bool:
        """Count a message received; whether it is within the limits.

        A message refused by one bucket takes nothing from the other. In drop mode, the
        refusal is counted in :attr:`dropped` and logged now and then.
        """
        now = time.monotonic()
        messages = self._messages
        if messages is not None and not messages.take(1, now):
            return self._refuse(now)
        bytes_ = self._bytes
        if bytes_ is not None:
            # str.isascii() is a flag check: only other text pays for its encoding.
            size = len(data) if isinstance(data, bytes) or data.isascii() else len(data.encode())
            if not bytes_.take(size, now):
                if messages is not None:
                    messages._tokens += 1  # the message was not let through after all
                return self._refuse(now)
        return True

    def _refuse(self, now: float) -> bool:
        if not self.close:
            self.dropped += 1
            if now >= self._next_warning:
                self._next_warning = now + WARN_INTERVAL
                logger.warning(
                    "dropping messages from a client over its rate limit (%d so far)",
                    self.dropped,
                )
        return False
