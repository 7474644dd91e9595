"""``geo-ws load``: scripted load tests of WebSocket endpoints, on gevent.

One process drives thousands of connections with :mod:`geo_ws.io.client`: each user is a
greenlet running plain synchronous code, except the hot loops of ``echo`` and of the
``broadcast`` receivers, which run as callbacks in gevent's hub (no greenlet switch per
message, the biggest cost of a round trip in Python). Built-in scenarios:

- ``echo``: C connections in closed loops (send, wait for the echo, check it byte for
  byte, repeat);
- ``broadcast``: C receivers and one sender; counts deliveries, missing and duplicated
  messages, and times each message from its send to its last receiver;
- ``connect``: opening handshakes (and closing ones) with C in flight;
- ``idle``: holds C connections, pinging each now and then, and reports how many
  survive;
- ``PATH.py``: a scenario script, plain synchronous Python::

      def user(client):                       # one iteration, repeated
          with client.step("login"):          # timed under its own name
              client.send("login alice")
              assert client.recv() == "welcome"

  with optional ``on_start(client)``, ``on_stop(client)`` and ``wait_time`` (seconds,
  or a function returning them, between iterations).

Every run is bounded: by ``-d`` seconds (10 by default, 60 with ``-n``) and, with
``-n``, by a count of messages (or handshakes, pings, iterations). Latencies are
kept exactly, as doubles in an ``array`` (8 bytes and well under a microsecond per
sample), and percentiles are exact; HdrHistogram's Python recording costs about
2.3 µs per sample, more than the rest of a round trip's bookkeeping. A tick every
``--interval`` seconds records the timeline (an index into each step's samples, so
ticks cost nothing per sample) and prints the progress line on a TTY.

The tool reports its own CPU use: above 90 % of a core it is probably the
bottleneck, and ``--processes N`` runs N worker processes (the connections split
between them) and merges their results.

Python API: :func:`run` one :class:`Options` in this process and get a
:class:`Part`; :func:`summarize` parts into the figures that ``--json`` writes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pickle
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from types import ModuleType
from typing import IO, Any, TypeAlias

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.pool import Group

from ..exceptions import ConnectionClosed, HandshakeError, WebSocketError
from ..io.client import ClientConnection, connect

__all__ = [
    "DESCRIPTION",
    "SCENARIOS",
    "Options",
    "Part",
    "Runner",
    "ScriptClient",
    "add_arguments",
    "command",
    "error_kind",
    "main",
    "merge",
    "percentile",
    "run",
    "summarize",
]

DESCRIPTION = """Load-test a WebSocket endpoint.

scenarios (--scenario):
  echo        C connections in closed loops; every echo checked byte for byte
  broadcast   C receivers and a sender; deliveries, missing, duplicated,
              latency from the send to the last receiver
  connect     opening and closing handshakes, C in flight
  idle        hold C connections, ping each every --ping-interval; survivors
  PATH.py     a script: def user(client): ... (on_start, on_stop, wait_time)

Exit status: 0 done; 1 an SLO (--max-p99, --max-errors) is not met, or nothing
succeeded; 2 usage error; 130 interrupted (the results so far are printed)."""
"""The help text of ``geo-ws load``."""

SCENARIOS = ("echo", "broadcast", "connect", "idle")
"""The built-in scenarios; anything ending in ``.py`` is a scenario script."""

#: Percentiles reported for every step.
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
#: Above this share of one core, the tool warns that it may be the bottleneck.
CPU_WARNING = 90.0
#: Opening handshakes in flight at most while users are spawned (except ``connect``).
HANDSHAKES_IN_FLIGHT = 100
#: How long users may take to finish their iteration after the end, in seconds.
GRACE = 1.0
#: Exit statuses.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

clock = time.perf_counter

Scenario: TypeAlias = Callable[["Runner"], None]


# --- options -------------------------------------------------------------------------------------


@dataclass
class Options:
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


# --- statistics ----------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0-100) of values sorted in ascending order.

    Raises:
        IndexError: ``ordered`` is empty.
    """
    rank = max(1, math.ceil(len(ordered) * q / 100 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Part:
    """What one process measured; :func:`merge` and :func:`summarize` read a list of them.

    Attributes:
        samples: latencies in seconds by step name, in the order they were measured.
        marks: by step name, ``len(samples[step])`` at each tick.
        tick_times: seconds since the measurement started, at each tick.
        tick_errors: errors so far, at each tick.
        tick_connections: open connections, at each tick.
        tick_cpu: this process's CPU seconds since the measurement started, at each tick.
        errors: errors by kind (``refused``, ``timeout``, ``closed 1011``, ``mismatch``...).
        counters: the scenario's own figures (deliveries, missing, survived...).
        opened: connections opened.
        duration: seconds measured (after the warm-up).
        cpu: CPU seconds (user + system) this process used while measuring.
        interrupted: the run was cut short (Ctrl-C, SIGTERM).
    """

    samples: dict[str, array[float]] = field(default_factory=dict)
    marks: dict[str, list[int]] = field(default_factory=dict)
    tick_times: list[float] = field(default_factory=list)
    tick_errors: list[int] = field(default_factory=list)
    tick_connections: list[int] = field(default_factory=list)
    tick_cpu: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)
    opened: int = 0
    duration: float = 0.0
    cpu: float = 0.0
    interrupted: bool = False

    def step(self, name: str) -> array[float]:
        """The samples of step ``name``, created empty on first use."""
        samples = self.samples.get(name)
        if samples is None:
            samples = self.samples[name] = array("d")
            self.marks[name] = [0] * len(self.tick_times)
        return samples


def merge(parts: Sequence[Part]) -> Part:
    """Merge the parts of several processes into one (ticks are aligned by index).

    Raises:
        ValueError: ``parts`` is empty.
    """
    if not parts:
        raise ValueError("nothing to merge")
    if len(parts) == 1:
        return parts[0]
    ticks = min(len(part.tick_times) for part in parts)
    merged = Part(tick_times=list(parts[0].tick_times[:ticks]))
    merged.tick_errors = [sum(p.tick_errors[i] for p in parts) for i in range(ticks)]
    merged.tick_connections = [sum(p.tick_connections[i] for p in parts) for i in range(ticks)]
    merged.tick_cpu = [sum(p.tick_cpu[i] for p in parts) for i in range(ticks)]
    names = sorted({name for part in parts for name in part.samples})
    for name in names:
        samples = merged.step(name)
        marks = merged.marks[name]
        # Interleave tick by tick, so that each interval keeps its own samples.
        empty = array("d")
        for i in range(ticks + 1):
            for part in parts:
                part_samples = part.samples.get(name, empty)
                part_marks = part.marks.get(name, [])
                start = part_marks[i - 1] if i else 0
                end = part_marks[i] if i < ticks else len(part_samples)
                samples.extend(part_samples[start:end])
            if i < ticks:
                marks[i] = len(samples)
    for part in parts:
        merged.errors.update(part.errors)
        merged.counters.update(part.counters)
        merged.opened += part.opened
        merged.cpu += part.cpu
        merged.interrupted |= part.interrupted
    merged.duration = max(part.duration for part in parts)
    return merged


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _latency_figures(samples: Sequence[float]) -> dict[str, float | None]:
    """min/mean/percentiles/max of latencies, in milliseconds (None without samples)."""
    names = ["min_ms", "mean_ms", *(_pname(q) for q in PERCENTILES), "max_ms"]
    if not samples:
        return dict.fromkeys(names)
    ordered = sorted(samples)
    figures: dict[str, float | None] = {
        "min_ms": _ms(ordered[0]),
        "mean_ms": _ms(math.fsum(ordered) / len(ordered)),
    }
    for q in PERCENTILES:
        figures[_pname(q)] = _ms(percentile(ordered, q))
    figures["max_ms"] = _ms(ordered[-1])
    return figures


def _pname(q: float) -> str:
    """``p99_ms``, ``p99_9_ms``: the JSON name of a percentile."""
    return f"p{q:g}_ms".replace(".", "_")


# --- errors --------------------------------------------------------------------------------------


class Mismatch(Exception):
    """A reply is not what was sent (``echo``), or a message is not one of the run's."""


def error_kind(exc: BaseException) -> str:
    """Name the kind of a failure, as counted in the report.

    ``refused``, ``timeout``, ``closed N`` (the close code), ``handshake N`` (the HTTP
    status), ``reset``, ``mismatch``, or the exception's class name.
    """
    if isinstance(exc, ConnectionClosed):
        return f"closed {exc.code}"
    if isinstance(exc, HandshakeError):
        return f"handshake {exc.status}" if exc.status else "handshake"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(exc, Mismatch):
        return "mismatch"
    return type(exc).__name__


#: Failures a user survives: counted, then the user goes on (with a new connection).
FAILURES = (OSError, WebSocketError, Mismatch)


# --- the runner ----------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Runner:
    """Runs one scenario in this process: users, connections, the clock and the figures.

    Scenarios are functions of a runner: they spawn users with :meth:`spawn_users`,
    open connections with :meth:`connect`, record latencies in :meth:`samples` and
    failures with :meth:`fail`, and stop when :attr:`active` turns False.

    Args:
        options: what to run.
        on_tick: called after each tick (the progress line).
    """

    def __init__(self, options: Options, on_tick: Callable[[Runner], None] | None = None) -> None:
        self.options = options
        self.part = Part()
        """The figures measured so far."""
        self.active = True
        """False once the run is over: users finish their iteration and return."""
        self.main_step = "echo"
        """The step the progress line, ``--max-p99 MS`` and the distribution plot use."""
        self.open: set[ClientConnection] = set()
        """The connections open now."""
        self.group = Group()
        """Every greenlet of the run."""
        self.remaining = options.messages
        """What is left of the ``-n`` budget; None without one."""
        self.at_stop: Callable[[], None] | None = None
        """Called once the run is over, before the connections are closed; by default
        users get one second to finish their iteration."""
        self._on_tick = on_tick
        self._closing = False
        self._stopped = Event()
        self._handshakes = Semaphore(HANDSHAKES_IN_FLIGHT)
        self._start = clock()
        self._cpu_start = _cpu_seconds()
        self._measuring = options.warmup <= 0

    # --- for scenarios ---------------------------------------------------------------------------

    def samples(self, step: str) -> array[float]:
        """The array to append latencies of ``step`` to, in seconds."""
        return self.part.step(step)

    def fail(self, exc: BaseException | str) -> None:
        """Count a failure (an exception, or a kind's name), unless the run is closing.

        Iterations still running when the run stops (their budget was taken, or the time
        ran out) count in full; what fails once the run closes the connections does not.
        """
        if not self._closing:
            self.part.errors[exc if isinstance(exc, str) else error_kind(exc)] += 1

    def take(self) -> bool:
        """Take one from the ``-n`` budget; False (and the run stops) once it is spent."""
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            self.stop()
            return False
        self.remaining -= 1
        return True

    def sleep(self, seconds: float) -> bool:
        """Sleep, cut short when the run stops; return :attr:`active`."""
        if seconds > 0:
            self._stopped.wait(seconds)
        return self.active

    def set_handshakes_in_flight(self, count: int) -> None:
        """Allow ``count`` opening handshakes at once (100 by default)."""
        self._handshakes = Semaphore(count)

    def connect(self) -> ClientConnection | None:
        """Open a connection to the URL, timed as step ``connect``.

        Returns:
            The connection, or None after a failure (counted) or once the run is over.
        """
        options = self.options
        with self._handshakes:
            if not self.active:
                return None
            start = clock()
            try:
                conn = connect(
                    options.url,
                    headers=options.headers,
                    subprotocols=options.subprotocols,
                    timeout=options.timeout,
                    max_message_size=max(2**20, options.size * 2),
                )
            except FAILURES as exc:
                self.fail(exc)
                return None
            self.part.step("connect").append(clock() - start)
        self.open.add(conn)
        self.part.opened += 1
        return conn

    def release(self, conn: ClientConnection) -> None:
        """Close a connection (closing handshake, bounded by ``timeout``) and forget it."""
        try:
            conn.close(timeout=self.options.timeout)
        finally:
            self.open.discard(conn)

    def spawn_users(self, count: int, user: Callable[[int], None]) -> None:
        """Spawn ``user(index)`` for ``count`` users, at ``rate`` per second if set."""
        rate = self.options.rate

        def spawner() -> None:
            started = clock()
            for index in range(count):
                if rate:
                    delay = started + index / rate - clock()
                    if delay > 0 and not self.sleep(delay):
                        return
                if not self.active:
                    return
                self.group.spawn(user, index)

        self.group.spawn(spawner)

    # --- the run ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """End the run: users finish their iteration, then connections are closed."""
        self.active = False
        self._stopped.set()

    def interrupt(self) -> None:
        """Ctrl-C: stop (and keep the results); a second one kills the users at once."""
        if self.part.interrupted:
            self.group.kill(block=False)
        self.part.interrupted = True
        self.stop()

    def run(self, scenario: Scenario) -> Part:
        """Run ``scenario`` until the time or the count runs out, or :meth:`stop`.

        Returns:
            What was measured.
        """
        options = self.options
        self._start = clock()
        self._cpu_start = _cpu_seconds()
        end = self._start + options.warmup + options.run_time
        ticker = gevent.spawn(self._ticks, end)
        try:
            scenario(self)
            self._stopped.wait(max(0.0, end - clock()))
        finally:
            self.stop()
            ended = clock()
            ticker.kill()
            self._last_tick(ended)
            part = self.part
            part.cpu = _cpu_seconds() - self._cpu_start
            self._finish()
        measured_from = self._start + (options.warmup if self._measuring else 0.0)
        part.duration = max(1e-9, min(ended, end) - measured_from)
        return part

    def _finish(self) -> None:
        """Let users finish (or run the scenario's end), then close what is still open."""
        if self.at_stop is not None:
            self.at_stop()
        else:
            self.group.join(timeout=GRACE)
        self._closing = True  # from here on, failures are the end's, not the run's
        closers = [gevent.spawn(self.release, conn) for conn in list(self.open)]
        gevent.joinall(closers, timeout=self.options.timeout + GRACE)
        self.group.join(timeout=GRACE)
        self.group.kill(block=True, timeout=GRACE)

    def _ticks(self, end: float) -> None:
        interval = self.options.interval
        warmup_end = self._start + self.options.warmup
        next_tick = self._start + interval
        while True:
            now = clock()
            if not self._measuring and now >= warmup_end:
                self._end_warmup(now)
                next_tick = now + interval
            wake = min(next_tick, end) if self._measuring else min(next_tick, warmup_end)
            gevent.sleep(max(0.0, wake - clock()))
            now = clock()
            if next_tick <= now < end and self._measuring:  # the last tick is run()'s
                self._tick(now)
                next_tick += interval
                if self._on_tick is not None:
                    self._on_tick(self)

    def _end_warmup(self, now: float) -> None:
        """Drop what the warm-up measured (handshake latencies stay) and restart the clocks."""
        self._measuring = True
        part = self.part
        for name, samples in part.samples.items():
            if name != "connect" or self.main_step == "connect":
                del samples[:]  # in place: users hold these arrays
        self._start = now - self.options.warmup
        self._cpu_start = _cpu_seconds()

    def _last_tick(self, now: float) -> None:
        """The end of the timeline; an interval shorter than half a tick joins the one before."""
        part = self.part
        if part.tick_times and now - self._start - self.options.warmup - part.tick_times[-1] < (
            self.options.interval / 2
        ):
            for values in (part.tick_times, part.tick_errors, part.tick_connections, part.tick_cpu):
                values.pop()
            for marks in part.marks.values():
                marks.pop()
        self._tick(now)

    def _tick(self, now: float) -> None:
        """Record one point of the timeline."""
        part = self.part
        if not self._measuring:
            return
        measured_from = self._start + self.options.warmup
        part.tick_times.append(round(now - measured_from, 6))
        for name, samples in part.samples.items():
            part.marks[name].append(len(samples))
        part.tick_errors.append(sum(part.errors.values()))
        part.tick_connections.append(len(self.open))
        part.tick_cpu.append(_cpu_seconds() - self._cpu_start)


# --- built-in scenarios --------------------------------------------------------------------------


def _payload(options: Options) -> str | bytes:
    """The message of ``echo``: ``size`` bytes of text, or random bytes with ``--binary``."""
    if options.binary:
        return os.urandom(options.size)
    return ("0123456789abcdef" * (options.size // 16 + 1))[: options.size]


class _Backoff:
    """Delays between reconnections after failures: 0.1 s doubling up to 2 s."""

    def __init__(self) -> None:
        self.delay = 0.0

    def failed(self) -> float:
        self.delay = min(2.0, self.delay * 2 or 0.1)
        return self.delay

    def succeeded(self) -> None:
        self.delay = 0.0


def echo(runner: Runner) -> None:
    """C connections in closed loops; every echo checked; step ``echo`` is a round trip."""
    runner.main_step = "echo"
    payload = _payload(runner.options)
    runner.spawn_users(runner.options.connections, partial(_echo_user, runner, payload))


class _EchoLoop:
    """One connection's closed loop, run by callbacks in gevent's hub.

    The connection hands each reply to :meth:`on_message`, which records it and sends
    the next message at once: no greenlet switch per message, which is most of what a
    round trip costs the tool in Python. The user's greenlet only watches for the end.
    """

    __slots__ = ("append", "conn", "done", "failure", "in_flight", "payload", "runner", "sent_at")

    def __init__(self, runner: Runner, conn: ClientConnection, payload: str | bytes) -> None:
        self.runner = runner
        self.conn = conn
        self.payload = payload
        self.append = runner.samples("echo").append
        self.sent_at = 0.0
        self.in_flight = False
        self.failure: BaseException | None = None
        self.done = Event()

    def next(self) -> None:
        """Send the next message, or end the loop once the run is over or the budget spent."""
        runner = self.runner
        if not (runner.active and (runner.remaining is None or runner.take())):
            self.done.set()
            return
        self.in_flight = True
        self.sent_at = clock()
        try:
            self.conn.send(self.payload)
        except FAILURES as exc:
            self.end(exc)

    def on_message(self, message: str | bytes) -> None:
        self.append(clock() - self.sent_at)
        self.in_flight = False
        if message != self.payload:
            self.runner.part.errors["mismatch"] += 1  # even after the end: a wrong echo
        self.next()

    def on_closed(self) -> None:
        conn = self.conn
        self.end(ConnectionClosed.for_code(conn.close_code or 1006, conn.close_reason or ""))

    def end(self, failure: BaseException) -> None:
        if not self.done.is_set():
            self.failure = failure
            self.done.set()


def _echo_user(runner: Runner, payload: str | bytes, index: int) -> None:
    timeout = runner.options.timeout
    backoff = _Backoff()
    while runner.active:
        conn = runner.connect()
        if conn is None:
            runner.sleep(backoff.failed())
            continue
        loop = _EchoLoop(runner, conn, payload)
        try:
            conn._deliver(loop.on_message, loop.on_closed)
            loop.next()
            # The loop runs in the hub; this greenlet watches for a reply that never comes.
            while not loop.done.wait(min(timeout, 1.0)):
                if loop.in_flight and clock() - loop.sent_at > timeout:
                    # A late echo may still arrive: only a new connection is in step again.
                    loop.end(TimeoutError("no echo within the timeout"))
            if loop.failure is None:
                backoff.succeeded()
            else:
                runner.fail(loop.failure)
                runner.sleep(backoff.failed())
        finally:
            runner.release(conn)


@dataclass
class _Broadcasts:
    """The ``broadcast`` scenario's bookkeeping, shared by its sender and receivers."""

    receivers: int = 0  # receivers registered before the first message
    connected: int = 0
    sent_at: array[float] = field(default_factory=lambda: array("d"))
    counts: array[int] = field(default_factory=lambda: array("l"))
    completed: int = 0
    probed: set[int] = field(default_factory=set)
    progress: Event = field(default_factory=Event)


def broadcast(runner: Runner) -> None:
    """C receivers and one sender; step ``broadcast``: send to last receiver; ``delivery``:
    send to each receiver."""
    runner.main_step = "broadcast"
    state = _Broadcasts()
    runner.spawn_users(runner.options.connections, partial(_receiver, runner, state))
    sender = runner.group.spawn(_sender, runner, state)
    # The end: the sender waits for the messages in flight (bounded), then all close.
    runner.at_stop = partial(sender.join, runner.options.timeout + GRACE)


def _parse_sequence(message: str | bytes) -> int:
    """The sequence number of a broadcast message, -1 for a probe.

    Raises:
        Mismatch: the message is neither.
    """
    if message[:1] in ("P", b"P"):
        return -1
    try:
        return int(message[:8])
    except ValueError:
        raise Mismatch("not a message of this run") from None


class _Receiver:
    """One receiver of ``broadcast``: its messages are counted by callbacks in the hub."""

    __slots__ = ("completions", "deliveries", "expected", "index", "runner", "state")

    def __init__(self, runner: Runner, state: _Broadcasts, index: int) -> None:
        self.runner = runner
        self.state = state
        self.index = index
        self.deliveries = runner.samples("delivery").append
        self.completions = runner.samples("broadcast").append
        self.expected = 0  # one sender, so every receiver sees the sequence in order

    def on_message(self, message: str | bytes) -> None:
        now = clock()
        state, part = self.state, self.runner.part
        try:
            seq = _parse_sequence(message)
            if seq >= len(state.counts):
                raise Mismatch("a sequence number that was not sent")
        except Mismatch as exc:
            self.runner.fail(exc)
            return
        if seq < 0:
            state.probed.add(self.index)
            state.progress.set()
            return
        if seq < self.expected:
            part.counters["duplicated"] += 1
            part.errors["duplicated"] += 1
            return
        self.expected = seq + 1
        count = state.counts[seq] = state.counts[seq] + 1
        part.counters["deliveries"] += 1
        latency = now - state.sent_at[seq]
        self.deliveries(latency)
        if count == state.receivers:
            self.completions(latency)
            state.completed += 1
            state.progress.set()


def _receiver(runner: Runner, state: _Broadcasts, index: int) -> None:
    conn = runner.connect()
    if conn is None:
        return
    state.connected += 1
    state.progress.set()
    closed = Event()
    try:
        # Counted in the hub as messages arrive; this greenlet waits for the end.
        conn._deliver(_Receiver(runner, state, index).on_message, closed.set)
        closed.wait()  # the run's end closes the connection, or the server does
        runner.fail(f"closed {conn.close_code}")  # counted only before the end
    finally:
        runner.release(conn)


def _sender(runner: Runner, state: _Broadcasts) -> None:
    options = runner.options
    timeout = options.timeout
    # Every receiver first: a message must reach all of them to complete.
    deadline = clock() + timeout
    while runner.active and state.connected < options.connections and clock() < deadline:
        state.progress.clear()
        state.progress.wait(max(0.0, deadline - clock()))
    conn = runner.connect()
    if conn is None:
        return
    runner.group.spawn(_drain, runner, conn)
    try:
        _probe(runner, state, conn)
        if state.receivers:
            _send_broadcasts(runner, state, conn)
        else:
            runner.fail("no receiver got the probes")
    except FAILURES as exc:
        runner.fail(exc)
    finally:
        runner.stop()  # the sender is the run


def _probe(runner: Runner, state: _Broadcasts, conn: ClientConnection) -> None:
    """Send probes until every connected receiver has seen one: all are registered."""
    deadline = clock() + runner.options.timeout
    probe = 0
    while runner.active and len(state.probed) < state.connected and clock() < deadline:
        conn.send(_message(runner.options, f"P{probe:07d}"))
        probe += 1
        state.progress.clear()
        state.progress.wait(min(0.1, max(0.0, deadline - clock())))
    state.receivers = len(state.probed)
    runner.part.counters["receivers"] = state.receivers


def _message(options: Options, head: str) -> str | bytes:
    """A broadcast message: ``head`` padded to ``size``, text or binary."""
    text = head + "x" * max(0, options.size - len(head))
    return text.encode() if options.binary else text


def _send_broadcasts(runner: Runner, state: _Broadcasts, conn: ClientConnection) -> None:
    options = runner.options
    window, timeout = options.window, options.timeout
    counters = runner.part.counters
    sent = 0
    while runner.active and runner.take():
        while runner.active and sent - state.completed >= window:
            state.progress.clear()
            if not state.progress.wait(timeout):
                runner.fail("stalled")
                runner.stop()
        if not runner.active:
            break
        state.counts.append(0)
        state.sent_at.append(clock())
        conn.send(_message(options, f"{sent:08d}"))
        sent += 1
        counters["sent"] += 1
    # The last messages in flight, within the timeout.
    deadline = clock() + timeout
    while state.completed < sent and clock() < deadline:
        state.progress.clear()
        state.progress.wait(max(0.0, deadline - clock()))
    missing = sum(max(0, state.receivers - count) for count in state.counts)
    counters["missing"] = missing
    if missing:
        # Errors even after the end: a message lost then is lost all the same.
        runner.part.errors["missing"] += missing


def _drain(runner: Runner, conn: ClientConnection) -> None:
    """Read what the server sends the sender (its own broadcasts, perhaps)."""
    counters = runner.part.counters
    try:
        while True:
            conn.recv()
            counters["sender_received"] += 1
    except FAILURES:
        pass


def connect_scenario(runner: Runner) -> None:
    """Opening and closing handshakes in loops, C in flight; step ``connect``, ``close``."""
    runner.main_step = "connect"
    runner.set_handshakes_in_flight(runner.options.connections)
    runner.spawn_users(runner.options.connections, partial(_connect_user, runner))


def _connect_user(runner: Runner, index: int) -> None:
    close_samples = runner.samples("close").append
    backoff = _Backoff()
    while runner.active and runner.take():
        conn = runner.connect()
        if conn is None:
            runner.sleep(backoff.failed())
            continue
        backoff.succeeded()
        start = clock()
        runner.release(conn)
        if conn.close_code == 1000:
            close_samples(clock() - start)
        else:
            runner.fail(f"closed {conn.close_code}")


def idle(runner: Runner) -> None:
    """Hold C connections, each pinging every ``ping_interval``; count the survivors."""
    runner.main_step = "ping"
    runner.spawn_users(runner.options.connections, partial(_idle_user, runner))
    runner.at_stop = partial(_last_pings, runner)


def _idle_user(runner: Runner, index: int) -> None:
    conn = runner.connect()
    if conn is None:
        return
    options, counters = runner.options, runner.part.counters
    pings = runner.samples("ping").append
    # Spread the pings over the interval rather than all at once.
    next_ping = clock() + random.uniform(0, options.ping_interval)
    try:
        while runner.active:
            try:
                conn.recv(timeout=max(0.0, next_ping - clock()))
                counters["received"] += 1
            except TimeoutError:
                if not (runner.active and runner.take()):
                    break
                pings(conn.ping(timeout=options.timeout))
                next_ping = clock() + options.ping_interval
        # Keep reading (the last pings' Pongs) until the run's end closes the connection.
        conn.recv()
    except FAILURES as exc:
        if runner.active:
            runner.fail(exc)
            counters["lost"] += 1
    finally:
        runner.release(conn)


def _last_pings(runner: Runner) -> None:
    """The end of ``idle``: ping every open connection once; those answering survived."""
    timeout = runner.options.timeout

    def check(conn: ClientConnection) -> bool:
        try:
            conn.ping(timeout=timeout)
        except FAILURES:
            return False
        return True

    checks = [gevent.spawn(check, conn) for conn in list(runner.open)]
    gevent.joinall(checks, timeout=timeout + GRACE)
    counters = runner.part.counters
    counters["survived"] = sum(1 for job in checks if job.value)
    counters["opened"] = runner.part.opened


BUILT_IN: dict[str, Scenario] = {
    "echo": echo,
    "broadcast": broadcast,
    "connect": connect_scenario,
    "idle": idle,
}


# --- scenario scripts ----------------------------------------------------------------------------


class ScriptClient:
    """What a scenario script's ``user``, ``on_start`` and ``on_stop`` receive.

    One per user; scripts may keep their own attributes on it between iterations.

    Attributes:
        index: the user's number, from 0.
        connection: the user's current connection (a new one after a lost one).
    """

    def __init__(self, runner: Runner, index: int) -> None:
        self.index = index
        self.connection: ClientConnection | None = None
        self._runner = runner

    @property
    def active(self) -> bool:
        """False once the run is over; long scripts may check it."""
        return self._runner.active

    def _conn(self) -> ClientConnection:
        if self.connection is None:
            raise ConnectionClosed(1006, "not connected")
        return self.connection

    def send(self, data: str | bytes) -> None:
        """Send a message (see :meth:`geo_ws.io.client.ClientConnection.send`)."""
        self._conn().send(data)
        self._runner.part.counters["sent"] += 1

    def recv(self, timeout: float | None = None) -> str | bytes:
        """Receive a message, waiting at most ``timeout`` (by default the run's ``--timeout``).

        Raises:
            TimeoutError: nothing came in time.
            ConnectionClosed: the connection is closed.
        """
        wait = self._runner.options.timeout if timeout is None else timeout
        message = self._conn().recv(timeout=wait)
        self._runner.part.counters["received"] += 1
        return message

    def ping(self, timeout: float | None = None) -> float:
        """Ping the server; return the round trip in seconds."""
        wait = self._runner.options.timeout if timeout is None else timeout
        return self._conn().ping(timeout=wait)

    def sleep(self, seconds: float) -> bool:
        """Think time: sleep, cut short when the run ends; return :attr:`active`."""
        return self._runner.sleep(seconds)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as one sample of step ``name``.

        A failure inside is counted as ``name: kind`` (``login: timeout``) and re-raised,
        which ends the iteration.
        """
        start = clock()
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, Exception) and not hasattr(exc, "_geo_ws_counted"):
                self._runner.fail(f"{name}: {error_kind(exc)}")
                exc._geo_ws_counted = True  # type: ignore[attr-defined]
            raise
        self._runner.part.step(name).append(clock() - start)


def load_script(path: str) -> ModuleType:
    """Import a scenario script from its path.

    Raises:
        ValueError: the file cannot be imported or has no ``user(client)`` function.
    """
    spec = importlib.util.spec_from_file_location("geo_ws_load_scenario", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path!r}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (OSError, SyntaxError, ImportError) as exc:
        raise ValueError(f"cannot import {path!r}: {exc}") from exc
    if not callable(getattr(module, "user", None)):
        raise ValueError(f"{path!r} has no user(client) function")
    return module


def script_scenario(module: ModuleType) -> Scenario:
    """The scenario of a script: each user connects, runs ``on_start``, then ``user`` in a
    loop (step ``user``, one sample per iteration) with ``wait_time`` between, and
    ``on_stop``. A lost connection is counted and replaced (``on_start`` runs again)."""

    def scenario(runner: Runner) -> None:
        runner.main_step = "user"
        runner.spawn_users(runner.options.connections, partial(_script_user, runner, module))

    return scenario


def _call_counted(
    runner: Runner, function: Callable[[ScriptClient], Any], client: ScriptClient
) -> bool:
    """Call a script's function; count an exception (once) and return False on one."""
    try:
        function(client)
    except Exception as exc:
        if not hasattr(exc, "_geo_ws_counted"):
            runner.fail(exc)
        return False
    return True


def _script_user(runner: Runner, module: ModuleType, index: int) -> None:
    user: Callable[[ScriptClient], Any] = module.user
    on_start: Callable[[ScriptClient], Any] | None = getattr(module, "on_start", None)
    on_stop: Callable[[ScriptClient], Any] | None = getattr(module, "on_stop", None)
    wait_time: float | Callable[[], float] = getattr(module, "wait_time", 0.0)
    iterations = runner.samples("user").append
    client = ScriptClient(runner, index)
    backoff = _Backoff()
    while runner.active:
        conn = client.connection = runner.connect()
        if conn is None:
            runner.sleep(backoff.failed())
            continue
        try:
            if on_start is not None and not _call_counted(runner, on_start, client):
                runner.sleep(backoff.failed())
                continue
            while runner.active and not conn.closed and runner.take():
                start = clock()
                if _call_counted(runner, user, client):
                    iterations(clock() - start)
                    backoff.succeeded()
                think = wait_time() if callable(wait_time) else wait_time
                runner.sleep(think)
            if conn.closed and runner.active:
                runner.sleep(backoff.failed())  # lost: counted where it surfaced
            elif on_stop is not None:
                _call_counted(runner, on_stop, client)
        finally:
            runner.release(conn)
            client.connection = None


def scenario_for(options: Options) -> Scenario:
    """The scenario function named by ``options.scenario`` (a built-in or a script path).

    Raises:
        ValueError: no such scenario, or a script that cannot be used.
    """
    if options.scenario in BUILT_IN:
        return BUILT_IN[options.scenario]
    if options.scenario.endswith(".py"):
        return script_scenario(load_script(options.scenario))
    raise ValueError(
        f"unknown scenario {options.scenario!r}: one of {', '.join(SCENARIOS)} or a .py script"
    )


# --- running -------------------------------------------------------------------------------------


def _raise_file_limit(connections: int) -> None:
    """Raise the soft limit of open files towards the hard one, for many connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass


def run(
    options: Options,
    *,
    scenario: Scenario | None = None,
    on_tick: Callable[[Runner], None] | None = None,
    handle_signals: bool = False,
) -> Part:
    """Run one load test in this process and return what it measured.

    Args:
        options: what to run (``processes`` is ignored here: see :func:`command`).
        scenario: the scenario function; by default :func:`scenario_for` ``(options)``.
        on_tick: called with the runner after every tick.
        handle_signals: stop cleanly on SIGINT and SIGTERM (the main thread only).

    Raises:
        ValueError: an unknown scenario or an unusable script.
    """
    if scenario is None:
        scenario = scenario_for(options)
    _raise_file_limit(options.connections)
    runner = Runner(options, on_tick=on_tick)
    handlers = []
    if handle_signals:
        handlers = [
            gevent.signal_handler(signum, runner.interrupt)
            for signum in (signal.SIGINT, signal.SIGTERM)
        ]
    try:
        part = runner.run(scenario)
    finally:
        for handler in handlers:
            handler.cancel()
    part.counters["main_step:" + runner.main_step] = 1
    return part


def _main_step(part: Part) -> str:
    """The main step a run recorded in its counters (``main_step:NAME``)."""
    for key in part.counters:
        if key.startswith("main_step:"):
            return key.partition(":")[2]
    return "echo"


# --- figures -------------------------------------------------------------------------------------


def summarize(
    options: Options, parts: Sequence[Part], cpu_by_process: Sequence[float] | None = None
) -> dict[str, Any]:
    """Every figure of a run, as written by ``--json``.

    Args:
        options: what was run.
        parts: what each process measured.
        cpu_by_process: each process's CPU use in % of one core (computed from the
            parts when None).
    """
    part = merge(parts)
    duration = part.duration
    main = _main_step(part)
    steps: dict[str, Any] = {}
    for name, samples in sorted(part.samples.items()):
        figures: dict[str, Any] = {
            "count": len(samples),
            "rate_per_s": round(len(samples) / duration, 1),
        }
        figures.update(_latency_figures(samples))
        steps[name] = figures
    if cpu_by_process is None:
        cpu_by_process = [round(100.0 * p.cpu / max(p.duration, 1e-9), 1) for p in parts]
    counters = {k: v for k, v in sorted(part.counters.items()) if not k.startswith("main_step:")}
    errors_total = sum(part.errors.values())
    summary: dict[str, Any] = {
        "scenario": options.scenario,
        "url": options.url,
        "options": {k: v for k, v in asdict(options).items() if k != "max_p99"},
        "main_step": main,
        "duration_s": round(duration, 3),
        "interrupted": part.interrupted,
        "processes": len(parts),
        "connections": {
            "target": options.connections,
            "opened": part.opened,
            "open_at_end": part.tick_connections[-1] if part.tick_connections else 0,
        },
        "steps": steps,
        "errors": {"total": errors_total, "by_kind": dict(part.errors.most_common())},
        "scenario_figures": counters,
        "timeline": _timeline(part),
        "tool_cpu": {
            "percent_of_one_core": list(cpu_by_process),
            "seconds": round(part.cpu, 3),
            "warning": any(cpu > CPU_WARNING for cpu in cpu_by_process),
        },
    }
    summary["options"]["max_p99"] = {str(k or main): v for k, v in options.max_p99.items()}
    summary["slo"] = _slo(options, summary)
    summary["exit_status"] = _exit_status(summary)
    return summary


def _timeline(part: Part) -> list[dict[str, Any]]:
    """Per tick: rate and p50/p99 of every step, errors, connections, CPU."""
    points: list[dict[str, Any]] = []
    previous_time = previous_cpu = 0.0
    for i, t in enumerate(part.tick_times):
        span = max(t - previous_time, 1e-9)
        steps: dict[str, Any] = {}
        for name, samples in part.samples.items():
            marks = part.marks[name]
            start = marks[i - 1] if i else 0
            window = sorted(samples[start : marks[i]])
            steps[name] = {
                "count": len(window),
                "rate_per_s": round(len(window) / span, 1),
                "p50_ms": _ms(percentile(window, 50)) if window else None,
                "p99_ms": _ms(percentile(window, 99)) if window else None,
            }
        points.append(
            {
                "t": t,
                "connections": part.tick_connections[i],
                "errors": part.tick_errors[i],
                "cpu_percent": round(100.0 * (part.tick_cpu[i] - previous_cpu) / span, 1),
                "steps": steps,
            }
        )
        previous_time, previous_cpu = t, part.tick_cpu[i]
    return points


def _slo(options: Options, summary: dict[str, Any]) -> dict[str, Any]:
    """Check ``--max-p99`` and ``--max-errors``."""
    checks: list[dict[str, Any]] = []
    for step, limit in options.max_p99.items():
        name = step or summary["main_step"]
        value = summary["steps"].get(name, {}).get("p99_ms")
        checks.append(
            {
                "check": f"p99 of {name} (ms)",
                "limit": limit,
                "value": value,
                # A step that never succeeded cannot meet its latency objective.
                "ok": value is not None and value <= limit,
            }
        )
    if options.max_errors is not None:
        total = summary["errors"]["total"]
        checks.append(
            {
                "check": "errors",
                "limit": options.max_errors,
                "value": total,
                "ok": total <= options.max_errors,
            }
        )
    return {"checks": checks, "ok": all(check["ok"] for check in checks)}


def _exit_status(summary: dict[str, Any]) -> int:
    if summary["interrupted"]:
        return EXIT_INTERRUPTED
    if not summary["slo"]["ok"]:
        return EXIT_FAILED
    main = summary["steps"].get(summary["main_step"], {"count": 0})
    if main["count"] == 0 and summary["errors"]["total"]:
        return EXIT_FAILED  # nothing worked
    return EXIT_OK


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def format_report(summary: dict[str, Any]) -> str:
    """The human-readable report: a table of steps, errors, scenario figures, CPU, SLOs."""
    connections = summary["connections"]
    lines = [
        f"geo-ws load: {summary['scenario']} on {summary['url']}",
        f"connections {connections['target']} (opened {connections['opened']})"
        f"   measured {summary['duration_s']:.2f} s   processes {summary['processes']}"
        + ("   INTERRUPTED" if summary["interrupted"] else ""),
        "",
    ]
    columns = ["p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms"]
    header = f"{'step':<16}{'count':>11}{'/s':>12}" + "".join(
        f"{name[:-3].replace('_', '.') + ' ms':>11}" for name in columns
    )
    lines.append(header)
    for name, figures in summary["steps"].items():
        marker = "*" if name == summary["main_step"] else " "
        row = f"{marker}{name:<15}{figures['count']:>11,}{figures['rate_per_s']:>12,.1f}"
        row += "".join(f"{_number(figures[c]):>11}" for c in columns)
        lines.append(row)
    errors = summary["errors"]
    kinds = ", ".join(f"{kind} {count}" for kind, count in errors["by_kind"].items())
    lines += ["", f"errors: {errors['total']}" + (f"  ({kinds})" if kinds else "")]
    if summary["scenario_figures"]:
        figures = "  ".join(f"{k} {v:,}" for k, v in summary["scenario_figures"].items())
        lines.append(f"{summary['scenario']}: {figures}")
    cpu = summary["tool_cpu"]
    shares = " + ".join(f"{share:.0f} %" for share in cpu["percent_of_one_core"])
    lines.append(f"tool CPU: {shares} of one core ({cpu['seconds']:.2f} s)")
    for check in summary["slo"]["checks"]:
        verdict = "ok" if check["ok"] else "FAILED"
        lines.append(f"SLO {check['check']} <= {check['limit']}: {check['value']} {verdict}")
    return "\n".join(lines)


def cpu_warning(summary: dict[str, Any]) -> str | None:
    """The warning printed when the tool used more than 90 % of a core, or None."""
    if not summary["tool_cpu"]["warning"]:
        return None
    top = max(summary["tool_cpu"]["percent_of_one_core"])
    return (
        f"warning: the load tool used {top:.0f} % of a core: it may be the bottleneck it "
        "measures; split the connections with --processes N (one per free core)"
    )


def progress_line(runner: Runner) -> str:
    """One line: elapsed, connections, the main step's rate and p50/p99, errors."""
    part = runner.part
    step = runner.main_step
    samples = part.samples.get(step)
    marks = part.marks.get(step, [])
    rate, p50, p99 = 0.0, None, None
    if samples is not None and marks:
        start = marks[-2] if len(marks) > 1 else 0
        window = sorted(samples[start : marks[-1]])
        times = part.tick_times
        span = times[-1] - (times[-2] if len(times) > 1 else 0.0)
        rate = len(window) / max(span, 1e-9)
        if window:
            p50, p99 = _ms(percentile(window, 50)), _ms(percentile(window, 99))
    elapsed = part.tick_times[-1] if part.tick_times else 0.0
    return (
        f"{elapsed:6.1f}s  conns {len(runner.open):,}  {step} {rate:,.0f}/s  "
        f"p50 {_number(p50)} ms  p99 {_number(p99)} ms  errors {sum(part.errors.values()):,}"
    )


def plot(summary: dict[str, Any], parts: Sequence[Part], path: str) -> None:
    """Draw throughput and latency over time, and the latency distribution, into ``path``.

    Raises:
        ImportError: matplotlib is not installed (``pip install geo_ws[load]``).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    part = merge(parts)
    times = [point["t"] for point in summary["timeline"]]
    figure, (rates, latencies, distribution) = plt.subplots(3, 1, figsize=(9, 11))
    figure.suptitle(f"geo-ws load: {summary['scenario']} on {summary['url']}")
    for name in summary["steps"]:
        series = [point["steps"].get(name, {}) for point in summary["timeline"]]
        rates.plot(times, [s.get("rate_per_s", 0) for s in series], label=name)
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            latencies.plot(times, [s.get(key) for s in series], style, label=f"{name} {key[:3]}")
    rates.set_title("throughput")
    rates.set_xlabel("seconds")
    rates.set_ylabel("per second")
    rates.legend(loc="best", fontsize="small")
    latencies.set_title("latency over time")
    latencies.set_xlabel("seconds")
    latencies.set_ylabel("ms")
    latencies.set_yscale("log")
    latencies.legend(loc="best", fontsize="small")
    main = summary["main_step"]
    samples = [s * 1000.0 for s in part.samples.get(main, [])]
    distribution.set_title(f"latency distribution of {main} ({len(samples):,} samples)")
    if samples:
        low, high = max(min(samples), 1e-3), max(samples)
        bins = [low * (high / low) ** (i / 60) for i in range(61)] if high > low else 60
        distribution.hist(samples, bins=bins)
        distribution.set_xscale("log")
        figures = summary["steps"][main]
        for name in ("p50_ms", "p99_ms", "p99_9_ms"):
            distribution.axvline(figures[name], linestyle=":", color="k")
            distribution.annotate(name[:-3].replace("_", "."), (figures[name], 0), rotation=90)
    distribution.set_xlabel("ms")
    distribution.set_ylabel("samples")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# --- several processes ---------------------------------------------------------------------------


def _share(total: int | None, workers: int, index: int) -> int | None:
    """Worker ``index``'s share of ``total`` (the first ones get the remainder)."""
    if total is None:
        return None
    return total // workers + (1 if index < total % workers else 0)


def worker_arguments(options: Options, workers: int, index: int) -> list[str]:
    """The ``geo-ws load`` arguments of worker ``index`` of ``workers``."""
    args = [options.url, "--scenario", options.scenario]
    args += ["-c", str(_share(options.connections, workers, index))]
    if options.rate:
        args += ["--rate", str(options.rate / workers)]
    args += ["-d", str(options.run_time)]
    messages = _share(options.messages, workers, index)
    if messages is not None:
        args += ["-n", str(messages)]
    args += ["--size", str(options.size), "--warmup", str(options.warmup)]
    args += ["--timeout", str(options.timeout), "--interval", str(options.interval)]
    args += ["--window", str(options.window), "--ping-interval", str(options.ping_interval)]
    if options.binary:
        args.append("--binary")
    for name, value in options.headers:
        args += ["-H", f"{name}: {value}"]
    for subprotocol in options.subprotocols:
        args += ["--subprotocol", subprotocol]
    return args


def run_processes(options: Options, on_progress: Callable[[str], None] | None = None) -> list[Part]:
    """Run ``options.processes`` workers (``python -m geo_ws load``) and collect their parts.

    Each worker gets its share of the connections, rate and count; they start together
    and their ticks are merged by index. SIGINT and SIGTERM are passed on to them.
    """
    workers = max(1, min(options.processes, options.connections))
    directory = tempfile.mkdtemp(prefix="geo-ws-load-")
    outputs = [os.path.join(directory, f"worker{i}.pickle") for i in range(workers)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "geo_ws",
                "load",
                *worker_arguments(options, workers, i),
                "--worker-output",
                outputs[i],
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    latest: list[dict[str, Any]] = [{} for _ in procs]

    def read_ticks(i: int, stream: IO[str]) -> None:
        for line in stream:
            latest[i] = json.loads(line)
            if on_progress is not None and all(latest):
                on_progress(_merged_progress(latest))

    readers = [gevent.spawn(read_ticks, i, p.stdout) for i, p in enumerate(procs) if p.stdout]

    def forward(signum: int) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    handlers = [
        gevent.signal_handler(signum, forward, signum) for signum in (signal.SIGINT, signal.SIGTERM)
    ]
    bound = options.warmup + options.run_time + 3 * options.timeout + 30
    try:
        for proc in procs:
            try:
                proc.wait(timeout=bound)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        gevent.joinall(readers, timeout=GRACE)
    finally:
        for handler in handlers:
            handler.cancel()
    parts = []
    for path in outputs:
        try:
            with open(path, "rb") as file:
                parts.append(pickle.load(file))
        except OSError:
            continue  # that worker failed: its error is on stderr
        finally:
            if os.path.exists(path):
                os.unlink(path)
    os.rmdir(directory)
    return parts


def _merged_progress(latest: Sequence[dict[str, Any]]) -> str:
    """The progress line of several workers: sums, and the worst p99."""
    p99s = [tick["p99"] for tick in latest if tick.get("p99") is not None]
    return (
        f"{latest[0]['t']:6.1f}s  conns {sum(t['connections'] for t in latest):,}  "
        f"{latest[0]['step']} {sum(t['rate'] for t in latest):,.0f}/s  "
        f"p99 (worst worker) {_number(max(p99s) if p99s else None)} ms  "
        f"errors {sum(t['errors'] for t in latest):,}"
    )


def _tick_record(runner: Runner) -> dict[str, Any]:
    """What a worker prints at each tick for its parent's progress line."""
    part = runner.part
    marks = part.marks.get(runner.main_step, [])
    samples = part.samples.get(runner.main_step, array("d"))
    start = marks[-2] if len(marks) > 1 else 0
    window = sorted(samples[start : marks[-1]]) if marks else []
    span = part.tick_times[-1] - (part.tick_times[-2] if len(part.tick_times) > 1 else 0.0)
    return {
        "t": part.tick_times[-1],
        "step": runner.main_step,
        "connections": len(runner.open),
        "rate": len(window) / max(span, 1e-9),
        "p99": _ms(percentile(window, 99)) if window else None,
        "errors": sum(part.errors.values()),
    }


# --- command line --------------------------------------------------------------------------------


def _header(value: str) -> tuple[str, str]:
    name, colon, content = value.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip(), content.strip()


def _p99(value: str) -> tuple[str | None, float]:
    step, equals, limit = value.rpartition("=")
    try:
        return (step if equals else None), float(limit)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MS or STEP=MS, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``geo-ws load``'s arguments to ``parser``."""
    add = parser.add_argument
    add("url", help="the endpoint: ws://host:port/path")
    add(
        "--scenario",
        "-s",
        default="echo",
        metavar="NAME|PATH.py",
        help="echo, broadcast, connect, idle, or a scenario script (echo)",
    )
    add("-c", "--connections", type=int, default=10, help="connections / users (10)")
    add("--rate", type=float, help="users spawned per second (as fast as handshakes go)")
    add("-d", "--duration", type=float, help="seconds to run (10; 60 with -n)")
    add("-n", "--messages", type=int, help="stop after N messages / handshakes / iterations")
    add("--size", type=int, default=32, help="message size in bytes (32)")
    add("--binary", action="store_true", help="send binary messages (text by default)")
    add("--warmup", type=float, default=0.0, help="seconds of warm-up, not measured (0)")
    add("--timeout", type=float, default=10.0, help="seconds one operation may take (10)")
    add("--interval", type=float, default=1.0, help="seconds between progress ticks (1)")
    add("--window", type=int, default=32, help="broadcast: messages in flight (32)")
    add("--ping-interval", type=float, default=5.0, help="idle: seconds between pings (5)")
    add(
        "-H",
        "--header",
        dest="headers",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra handshake header (repeatable)",
    )
    add(
        "--subprotocol",
        dest="subprotocols",
        action="append",
        default=[],
        help="offer this subprotocol (repeatable)",
    )
    add(
        "--max-p99",
        type=_p99,
        action="append",
        default=[],
        metavar="[STEP=]MS",
        help="exit 1 if the p99 of the main step (or STEP) exceeds MS",
    )
    add("--max-errors", type=int, metavar="N", help="exit 1 if there are more than N errors")
    add("--processes", type=int, default=1, metavar="N", help="worker processes (1)")
    add("--json", dest="json_path", metavar="OUT.json", help="write every figure to this file")
    add("--plot", dest="plot_path", metavar="OUT.png", help="draw throughput and latencies")
    add("--worker-output", help=argparse.SUPPRESS)


def options_from(args: argparse.Namespace) -> Options:
    """Build :class:`Options` from parsed ``geo-ws load`` arguments (same names)."""
    values = {f.name: getattr(args, f.name) for f in fields(Options) if hasattr(args, f.name)}
    values["max_p99"] = dict(values["max_p99"])  # given as (step, limit) pairs
    return Options(**values)


def _check_usage(options: Options) -> str | None:
    """A usage error in ``options``, or None."""
    if options.connections < 1:
        return "-c must be at least 1"
    if options.messages is not None and options.messages < 1:
        return "-n must be at least 1"
    if options.run_time <= 0 or options.interval <= 0 or options.timeout <= 0:
        return "-d, --interval and --timeout must be positive"
    if options.size < (8 if options.scenario == "broadcast" else 0):
        return "--size must be at least 8 for broadcast (the sequence number)"
    if options.plot_path and importlib.util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib: pip install 'geo_ws[load]'"
    return None


def command(args: argparse.Namespace) -> int:
    """Run ``geo-ws load`` with parsed arguments; return the exit status.

    0: done; 1: an SLO is not met, or nothing succeeded; 2: a usage error;
    130: interrupted (the results so far are still reported).
    """
    options = options_from(args)
    problem = _check_usage(options)
    scenario: Scenario | None = None
    if problem is None and options.processes <= 1:
        try:
            scenario = scenario_for(options)  # imports a script once, here
        except ValueError as exc:
            problem = str(exc)
    if problem is not None:
        print(f"geo-ws load: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.worker_output:
        return _worker(options, scenario, args.worker_output)
    tty = sys.stderr.isatty()
    show = tty if options.progress is None else options.progress

    def on_tick(runner: Runner) -> None:
        sys.stderr.write("\r" + progress_line(runner).ljust(100))
        sys.stderr.flush()

    def on_progress(line: str) -> None:
        sys.stderr.write("\r" + line.ljust(100))
        sys.stderr.flush()

    cpu_by_process: list[float] | None = None
    if options.processes > 1:
        parts = run_processes(options, on_progress if show else None)
        if not parts:
            print("geo-ws load: no worker produced results", file=sys.stderr)
            return EXIT_FAILED
    else:
        parts = [
            run(
                options,
                scenario=scenario,
                on_tick=on_tick if show else None,
                handle_signals=True,
            )
        ]
    if show:
        sys.stderr.write("\n")
    summary = summarize(options, parts, cpu_by_process)
    print(format_report(summary))
    warning = cpu_warning(summary)
    if warning:
        print(warning, file=sys.stderr)
    if options.json_path:
        with open(options.json_path, "w") as file:
            json.dump(summary, file, indent=1)
    if options.plot_path:
        plot(summary, parts, options.plot_path)
    return int(summary["exit_status"])


def _worker(options: Options, scenario: Scenario | None, output: str) -> int:
    """A worker of ``--processes``: run, print ticks as JSON lines, pickle the part."""

    def on_tick(runner: Runner) -> None:
        print(json.dumps(_tick_record(runner)), flush=True)

    part = run(options, scenario=scenario, on_tick=on_tick, handle_signals=True)
    with open(output, "wb") as file:
        pickle.dump(part, file)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``geo-ws load`` on its own: parse ``argv`` and run; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="geo-ws load",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return command(parser.parse_args(argv))
