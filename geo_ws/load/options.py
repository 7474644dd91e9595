"""What a ``geo-ws load`` run does: :class:`LoadOptions`, the command line's options.

Not to be confused with :class:`geo_ws.io.options.Options`, the options of one connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LoadOptions"]


@dataclass
class LoadOptions:
    """What to run: the command line's options, usable from Python too.

    Attributes:
        url: the endpoint, ``ws://host:port/path`` (or ``wss://``).
        scenario: ``echo``, ``broadcast``, ``connect``, ``idle`` or a script's path.
        connections: connections (users) to open; receivers for ``broadcast``,
            handshakes in flight for ``connect``.
        rate: users spawned per second; None spawns them as fast as handshakes go
            (at most 100 in flight).
        duration: seconds to run after the warm-up; None means 10, or 60 with
            ``messages``.
        messages: stop after this many messages (echoes, broadcasts, handshakes,
            pings, script iterations); None for no count limit.
        size: payload size in bytes (``echo``, ``broadcast``).
        binary: send binary messages instead of text.
        warmup: seconds whose latencies are dropped before measuring.
        timeout: seconds any one operation (handshake, echo, ping) may take.
        interval: seconds between ticks: the timeline's resolution and the progress
            line's refresh.
        window: ``broadcast``: messages in flight at most (sent, not yet received by
            every receiver).
        ping_interval: ``idle``: seconds between two pings of one connection.
        headers: extra handshake headers, as ``(name, value)`` pairs.
        subprotocols: subprotocols to offer.
        resume: connect with ``geo_ws.client.connect(..., resume=True)``: on an endpoint
            with recovery, a user whose connection drops comes back by itself and goes on
            receiving every message once, in order (no error counted, no reconnect).
        max_p99: SLOs: the largest p99 allowed in milliseconds, by step name; the key
            None stands for the scenario's main step.
        max_errors: SLO: the largest number of errors allowed.
        processes: worker processes to split the connections between.
        json_path: where to write every figure as JSON.
        plot_path: where to draw the plots (PNG; needs matplotlib).
        progress: print the progress line (on a TTY only, by default).
    """

    url: str
    scenario: str = "echo"
    connections: int = 10
    rate: float | None = None
    duration: float | None = None
    messages: int | None = None
    size: int = 32
    binary: bool = False
    warmup: float = 0.0
    timeout: float = 10.0
    interval: float = 1.0
    window: int = 32
    ping_interval: float = 5.0
    headers: list[tuple[str, str]] = field(default_factory=list)
    subprotocols: list[str] = field(default_factory=list)
    resume: bool = False
    max_p99: dict[str | None, float] = field(default_factory=dict)
    max_errors: int | None = None
    processes: int = 1
    json_path: str | None = None
    plot_path: str | None = None
    progress: bool | None = None

    @property
    def run_time(self) -> float:
        """Seconds to run after the warm-up."""
        if self.duration is not None:
            return self.duration
        return 10.0 if self.messages is None else 60.0
