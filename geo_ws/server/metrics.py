"""Prometheus metrics of geo_ws's endpoints, without the web framework
(:mod:`geo_ws.flask.metrics` exposes them).

Cheap on the hot path: a connection counts its messages and bytes in plain ints
(:meth:`~geo_ws.io.connection.Connection.take_counts`) and handler durations (of one
message in :data:`SAMPLE_EVERY`) go to plain lists; every :data:`FOLD_INTERVAL`
seconds, before each scrape and when a connection ends, this process folds them into
prometheus_client's metrics. The open
connections and the bytes waiting in outboxes are read from the endpoints' registries
at those times (gauges set, never counted up and down); the brokers' counters are read
from :attr:`~geo_ws.delivery.broker.Broker.stats`, every field there is.

Under gunicorn with several workers, prometheus_client's multiprocess mode sums the
workers: ``PROMETHEUS_MULTIPROC_DIR`` names an empty directory, set before the workers
start. The gauges are ``livesum``: a worker's part disappears when it exits (geo_ws's
worker says so), or when a scrape finds it dead (SIGKILL, a crash).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary, WeakSet

import gevent

from .._compat.prometheus import (
    add_observations,
    live_gauge_pids,
    mark_process_dead,
    multiprocess_registry,
)
from ..delivery.broker import Broker
from ..delivery.registry import Registry
from ..io.connection import Connection

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "FOLD_INTERVAL",
    "HANDLER_BUCKETS",
    "ROUND_TRIP_BUCKETS",
    "SAMPLE_EVERY",
    "EndpointMeter",
    "Metrics",
    "MetricsConfigError",
    "forget_process",
    "note_workers",
    "process_metrics",
]

logger = logging.getLogger("geo_ws")

FOLD_INTERVAL = 1.0
"""Seconds between two folds of a process's counts into its metrics."""
SAMPLE_EVERY = 16
"""The message handler runs of an endpoint timed: one in this many (two clock readings
and a bucket cost as much as a tenth of a small echo's whole work)."""
HANDLER_BUCKETS = (
    *(0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01),
    *(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
"""Upper bounds of the handler duration histogram, in seconds."""
ROUND_TRIP_BUCKETS = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    *(2.5, 5.0, 10.0),
)
"""Upper bounds of the ping round trip histogram, in seconds."""
EVENTS = ("connect", "message", "close")

# How many workers share the metrics, as geo_ws's gunicorn worker tells (see note_workers).
_workers = 1


class MetricsConfigError(RuntimeError):
    """The metrics cannot be right as configured (a scrape answers 500 with this)."""


def note_workers(count: int) -> None:
    """Say how many worker processes serve the app (geo_ws's gunicorn worker does)."""
    global _workers
    _workers = count


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` (or its old lowercase name), if set."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def forget_process(pid: int | None = None) -> None:
    """Drop a process's live gauges from the multiprocess directory, if there is one.

    Args:
        pid: the process that ended (default: this one, on its way out).
    """
    directory = multiprocess_dir()
    if directory is None:
        return
    mark_process_dead(os.getpid() if pid is None else pid, directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True


class _Tally:
    """Observations of one histogram kept as plain counts per bucket until folded."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = (*bounds, float("inf"))
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def fold_into(self, histogram: Any) -> None:
        """Add what was counted to ``histogram`` (a labelled child) and start afresh."""
        if any(self.counts):
            counts, total = self.counts, self.total
            self.counts, self.total = [0] * len(self.bounds), 0.0
            add_observations(histogram, counts, total)


class _Family:
    """The prometheus_client metrics, made once per process."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        endpoint = ("endpoint",)
        self.open = Gauge(
            "geo_ws_open_connections",
            "WebSocket connections open.",
            endpoint,
            multiprocess_mode="livesum",
        )
        self.outbox = Gauge(
            "geo_ws_outbox_bytes",
            "Bytes waiting for clients to read them.",
            endpoint,
            multiprocess_mode="livesum",
        )
        self.handshakes = Counter(
            "geo_ws_handshakes",
            "WebSocket handshakes answered, by HTTP status (101: accepted).",
            (*endpoint, "status"),
        )
        self.received = Counter("geo_ws_messages_received", "Data messages received.", endpoint)
        self.sent = Counter("geo_ws_messages_sent", "Data messages sent.", endpoint)
        self.received_bytes = Counter(
            "geo_ws_received_bytes",
            "Bytes of frames received after the handshake, headers included.",
            endpoint,
        )
        self.sent_bytes = Counter(
            "geo_ws_sent_bytes",
            "Bytes of frames sent after the handshake, headers included.",
            endpoint,
        )
        self.closes = Counter(
            "geo_ws_closes",
            "WebSocket connections closed, by close code (1006: lost).",
            (*endpoint, "code"),
        )
        self.slow = Counter(
            "geo_ws_slow_consumer_closes",
            "Connections closed with 1008 because the client read too slowly.",
            endpoint,
        )
        self.handler = Histogram(
            "geo_ws_handler_duration_seconds",
            f"Time the handlers took (message handlers: one run in {SAMPLE_EVERY}).",
            (*endpoint, "event"),
            buckets=HANDLER_BUCKETS,
        )
        self.round_trip = Histogram(
            "geo_ws_ping_round_trip_seconds",
            "Keepalive ping round trips.",
            endpoint,
            buckets=ROUND_TRIP_BUCKETS,
        )
        self._counter = Counter
        self.broker: dict[str, Any] = {}

    def broker_counter(self, name: str) -> Any:
        """The counter of the broker statistic ``name`` (a field of BrokerStats)."""
        counter = self.broker.get(name)
        if counter is None:
            counter = self.broker[name] = self._counter(
                f"geo_ws_broker_{name}", f"Broker: BrokerStats.{name}, summed over brokers."
            )
        return counter


class EndpointMeter:
    """What one endpoint counts in this process, across the apps that serve it.

    Args:
        family: the metrics to fold into.
        key: the endpoint's name across processes (its registries' key): the
            ``endpoint`` label.
        brokers: where to note the brokers whose counters the metrics read.
    """

    def __init__(
        self, family: _Family, key: str, brokers: WeakKeyDictionary[Broker, dict[str, int]]
    ) -> None:
        self._family = family
        self._brokers = brokers
        self.key = key
        """The ``endpoint`` label."""
        self._registries: WeakSet[Registry] = WeakSet()
        self._handlers = {event: _Tally(HANDLER_BUCKETS) for event in EVENTS}
        self._round_trips = _Tally(ROUND_TRIP_BUCKETS)
        self._until_sample = SAMPLE_EVERY
        family.slow.labels(key)  # shown from the start: 0 is news too

    def opened(self, registry: Registry, connection: Connection, broker: Broker) -> None:
        """A connection of ``registry`` opened (its handshake answered with 101): count
        it, and watch its registry, broker and pings."""
        self.handshake(101)
        self._registries.add(registry)
        self._brokers.setdefault(broker, {})
        connection.on_round_trip = self._round_trips.observe

    def handshake(self, status: int) -> None:
        """Count a handshake answered with ``status`` (101: accepted)."""
        self._family.handshakes.labels(self.key, str(status)).inc()

    def started(self, event: str) -> float | None:
        """A handler starts: the time if this run is to be timed (then report it to
        :meth:`handled`), else ``None``.

        Args:
            event: ``connect`` or ``close`` (always timed), or ``message`` (one run in
                :data:`SAMPLE_EVERY`).
        """
        if event == "message":
            self._until_sample -= 1
            if self._until_sample:
                return None
            self._until_sample = SAMPLE_EVERY
        return time.perf_counter()

    def handled(self, event: str, seconds: float) -> None:
        """Count a timed handler run (``event``: ``connect``, ``message`` or ``close``)."""
        self._handlers[event].observe(seconds)

    def closing(self, connection: Connection) -> None:
        """Count a connection's closing, once receiving has ended, before the close
        handler: by the code the server asked for, else the client's (1005: none;
        1006: lost)."""
        request = connection.close_request
        ended = connection.ended
        code = request.code if request is not None else ended[0] if ended is not None else 1006
        self._family.closes.labels(self.key, str(code)).inc()
        if connection.overflowed:
            self._family.slow.labels(self.key).inc()

    def ended(self, connection: Connection) -> None:
        """Fold a connection's last counts, once its TCP connection is closed."""
        self._add(*connection.take_counts())

    def _add(self, *counts: int) -> None:
        family, key = self._family, self.key
        metrics = (family.received, family.received_bytes, family.sent, family.sent_bytes)
        for metric, count in zip(metrics, counts, strict=True):
            if count:
                metric.labels(key).inc(count)

    def fold(self) -> None:
        """Fold what the open connections counted; set the gauges from the registries."""
        totals = [0, 0, 0, 0]
        open_ = waiting = 0
        for registry in list(self._registries):
            open_ += len(registry)
            for connection in registry.connections():
                for i, count in enumerate(connection.take_counts()):
                    totals[i] += count
                waiting += connection.outbox_bytes
        self._add(*totals)
        family = self._family
        family.open.labels(self.key).set(open_)
        family.outbox.labels(self.key).set(waiting)
        for event, tally in self._handlers.items():
            tally.fold_into(family.handler.labels(self.key, event))
        self._round_trips.fold_into(family.round_trip.labels(self.key))


class Metrics:
    """This process's metrics: one :class:`EndpointMeter` per endpoint, the brokers'
    counters, and the greenlet that folds them every :data:`FOLD_INTERVAL` seconds.

    Use :func:`process_metrics`: prometheus_client allows each metric name once per
    process.
    """

    def __init__(self) -> None:
        self._family = _Family()
        self._meters: dict[str, EndpointMeter] = {}
        # What each broker's stats were at the last fold: counters grow by the difference.
        self._brokers: WeakKeyDictionary[Broker, dict[str, int]] = WeakKeyDictionary()
        self._folder_pid = 0  # the process whose folder greenlet runs

    def meter(self, key: str) -> EndpointMeter:
        """The meter of the endpoint named ``key`` (its registries' key)."""
        if self._folder_pid != os.getpid():
            self._folder_pid = os.getpid()  # in a forked worker: its own folder
            gevent.spawn(self._fold_forever)
        meter = self._meters.get(key)
        if meter is None:
            meter = self._meters[key] = EndpointMeter(self._family, key, self._brokers)
        return meter

    def fold(self) -> None:
        """Fold everything this process counted into the metrics."""
        for meter in list(self._meters.values()):
            meter.fold()
        for broker, seen in list(self._brokers.items()):
            for name, value in dataclasses.asdict(broker.stats).items():
                # Smaller: the stats were reset (RedisBroker after a fork).
                grown = value - seen.get(name, 0) if value >= seen.get(name, 0) else value
                seen[name] = value
                counter = self._family.broker_counter(name)  # made at once: shown as 0
                if grown:
                    counter.inc(grown)

    def _fold_forever(self) -> None:
        while True:
            gevent.sleep(FOLD_INTERVAL)
            try:
                self.fold()
            except Exception:
                logger.exception("folding the metrics")

    def exposition(self) -> tuple[bytes, str]:
        """Fold, then render every process's metrics in Prometheus' text format.

        Returns:
            The body and its content type.

        Raises:
            MetricsConfigError: several workers without a multiprocess directory, or a
                directory that does not exist.
        """
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self.fold()
        return generate_latest(self._collector_registry()), CONTENT_TYPE_LATEST

    def _collector_registry(self) -> CollectorRegistry:
        from prometheus_client import REGISTRY

        directory = multiprocess_dir()
        if directory is None:
            if _workers > 1:
                raise MetricsConfigError(
                    f"{_workers} workers, but PROMETHEUS_MULTIPROC_DIR is not set: each "
                    "scrape would see one worker. Set it to an empty directory in the "
                    "environment of gunicorn (see geo_ws's docs/deployment.md, Metrics)."
                )
            return REGISTRY
        if not os.path.isdir(directory):
            raise MetricsConfigError(
                f"PROMETHEUS_MULTIPROC_DIR={directory} is not a directory: create it "
                "(empty) before gunicorn starts."
            )
        # Workers killed without a word (SIGKILL, a crash): forget their connections.
        for pid in live_gauge_pids(directory):
            if not _alive(pid):
                forget_process(pid)
        return multiprocess_registry(directory)


_metrics: Metrics | None = None


def process_metrics() -> Metrics:
    """This process's :class:`Metrics`, made on first use.

    Raises:
        ImportError: prometheus_client is not installed (``pip install geo_ws[metrics]``).
    """
    global _metrics
    if _metrics is None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise ImportError(
                "geo_ws's metrics need prometheus_client: pip install 'geo_ws[metrics]'"
            ) from None
        _metrics = Metrics()
    return _metrics
