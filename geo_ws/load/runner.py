"""The runner of one scenario in one process: users, connections, the clock, the figures.

Each user is a greenlet running plain synchronous code on :mod:`geo_ws.io.client`.
Every run is bounded: by ``-d`` seconds (10 by default, 60 with ``-n``) and, with ``-n``,
by a count of messages (or handshakes, pings, iterations). Latencies are kept exactly, as
doubles in an ``array`` (8 bytes and well under a microsecond per sample);
HdrHistogram's Python recording costs about 2.3 µs per sample, more than the rest of a
round trip's bookkeeping. A tick every ``--interval`` seconds records the timeline (an
index into each step's samples, so ticks cost nothing per sample) and calls back the
progress line.

Python API: :func:`run` one :class:`~geo_ws.load.options.LoadOptions` in this process
and get a :class:`~geo_ws.load.part.Part`; :func:`geo_ws.load.report.summarize` parts
into the figures that ``--json`` writes.
"""

from __future__ import annotations

import resource
import signal
import time
from array import array
from collections.abc import Callable
from typing import Any, TypeAlias

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.pool import Group

from ..exceptions import ConnectionClosed, HandshakeError, WebSocketError
from ..io.client import ClientConnection, connect
from ..io.resuming import ResumingConnection
from .options import LoadOptions
from .part import Part

__all__ = [
    "FAILURES",
    "Client",
    "GRACE",
    "HANDSHAKES_IN_FLIGHT",
    "Mismatch",
    "Runner",
    "Scenario",
    "clock",
    "error_kind",
    "run",
]

#: Opening handshakes in flight at most while users are spawned (except ``connect``).
HANDSHAKES_IN_FLIGHT = 100
#: How long users may take to finish their iteration after the end, in seconds.
GRACE = 1.0

clock = time.perf_counter

Client: TypeAlias = ClientConnection | ResumingConnection
"""A user's connection: a :class:`ResumingConnection` with ``--resume``."""

Scenario: TypeAlias = Callable[["Runner"], None]
"""A scenario: a function that starts its users on a runner (see :class:`Runner`)."""


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

    def __init__(
        self, options: LoadOptions, on_tick: Callable[[Runner], None] | None = None
    ) -> None:
        self.options = options
        self.part = Part()
        """The figures measured so far."""
        self.active = True
        """False once the run is over: users finish their iteration and return."""
        self.main_step = "echo"
        """The step the progress line, ``--max-p99 MS`` and the distribution plot use."""
        self.open: set[Client] = set()
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

    def note(self, text: str) -> None:
        """Tell the user ``text`` in the report (once, however often it is noted)."""
        if text not in self.part.notes:
            self.part.notes.append(text)

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

    def connect(self) -> Client | None:
        """Open a connection to the URL, timed as step ``connect``.

        Returns:
            The connection, or None after a failure (counted) or once the run is over.
        """
        options = self.options
        settings: dict[str, Any] = {
            "headers": options.headers,
            "timeout": options.timeout,
            "max_message_size": max(2**20, options.size * 2),
        }
        conn: Client
        with self._handshakes:
            if not self.active:
                return None
            start = clock()
            try:
                if options.resume:
                    conn = connect(options.url, resume=True, **settings)
                else:
                    conn = connect(options.url, subprotocols=options.subprotocols, **settings)
            except FAILURES as exc:
                self.fail(exc)
                return None
            self.part.step("connect").append(clock() - start)
        self.open.add(conn)
        self.part.opened += 1
        return conn

    def release(self, conn: Client) -> None:
        """Close a connection (closing handshake, bounded by ``timeout``) and forget it.

        A resuming one's comebacks are counted as ``reconnects`` (once: the run's end
        releases what its users have not released yet).
        """
        try:
            conn.close(timeout=self.options.timeout)
        finally:
            if conn in self.open and isinstance(conn, ResumingConnection):
                self.part.counters["reconnects"] += conn.reconnects
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
    options: LoadOptions,
    *,
    scenario: Scenario | None = None,
    on_tick: Callable[[Runner], None] | None = None,
    handle_signals: bool = False,
) -> Part:
    """Run one load test in this process and return what it measured.

    Args:
        options: what to run (``processes`` is ignored here: see
            :func:`geo_ws.load.processes.run_processes`).
        scenario: the scenario function; by default
            :func:`~geo_ws.load.scenarios.scenario_for` ``(options)``.
        on_tick: called with the runner after every tick.
        handle_signals: stop cleanly on SIGINT and SIGTERM (the main thread only).

    Raises:
        ValueError: an unknown scenario or an unusable script.
    """
    if scenario is None:
        from .scenarios import scenario_for  # here: the scenarios import this module

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
