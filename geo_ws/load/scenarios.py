"""The scenarios of ``geo-ws load``: the built-in ones, and scenario scripts.

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

The hot loops of ``echo`` and of the ``broadcast`` receivers run as callbacks in gevent's
hub (no greenlet switch per message, the biggest cost of a round trip in Python). With
``--resume`` a greenlet per user reads its ``ResumingConnection`` and calls them.
"""

from __future__ import annotations

import importlib.util
import os
import random
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any

import gevent
from gevent.event import Event

from ..exceptions import ConnectionClosed
from ..io.backoff import Backoff
from ..io.client import ClientConnection
from ..io.resuming import MessagesLost, ResumingConnection
from .options import LoadOptions
from .runner import FAILURES, GRACE, Client, Mismatch, Runner, Scenario, clock, error_kind

__all__ = [
    "BUILT_IN",
    "SCENARIOS",
    "ScriptClient",
    "broadcast",
    "connect_scenario",
    "echo",
    "idle",
    "load_script",
    "scenario_for",
    "script_scenario",
]

SCENARIOS = ("echo", "broadcast", "connect", "idle")
"""The built-in scenarios; anything ending in ``.py`` is a scenario script."""


def _payload(options: LoadOptions, index: int) -> str | bytes:
    """User ``index``'s message in ``echo``: ``size`` bytes of text, the user's number then
    random hex digits, or random bytes with ``--binary``.

    Each user's differs (in other worker processes too), so that a message the endpoint
    sends every client (a broadcast) is not taken for another user's echo.
    """
    if options.binary:
        return os.urandom(options.size)
    return (f"{index} " + os.urandom(options.size // 2 + 1).hex())[: options.size]


def echo(runner: Runner) -> None:
    """C connections in closed loops; every echo checked; step ``echo`` is a round trip.

    A user stops at its first mismatch: the endpoint does not echo, and sending on would
    only flood it. The report says so, and the run ends once every user has stopped.
    """
    runner.main_step = "echo"
    mismatches = _Mismatches(runner)
    runner.spawn_users(runner.options.connections, partial(_echo_user, runner, mismatches))


class _Mismatches:
    """The users of ``echo`` that stopped at a mismatch."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.users = 0

    def stopped(self, mismatch: Mismatch) -> None:
        """Count a user's mismatch; explain the first one; stop the run after the last user."""
        runner = self.runner
        runner.fail(mismatch)
        if not self.users:
            runner.note(
                f"{runner.options.url} does not echo: it {mismatch}; "
                "each echo user stops at its first mismatch"
            )
        self.users += 1
        if self.users >= runner.options.connections:
            runner.stop()


def _deliver(
    runner: Runner,
    conn: Client,
    on_message: Callable[[str | bytes], None],
    on_closed: Callable[[], None],
) -> None:
    """Hand each message of ``conn`` to ``on_message``, and its end to ``on_closed``.

    A plain connection calls them in gevent's hub as messages arrive. A resuming one
    (``--resume``) is read by a greenlet of the run, since its stream goes on across
    connections; a resume that lost messages is counted (``recovery failed``, and an
    error ``MessagesLost``) and the stream goes on.
    """
    if isinstance(conn, ClientConnection):
        conn._deliver(on_message, on_closed)
        return

    def read() -> None:
        while True:
            try:
                message = conn.recv()
            except MessagesLost as lost:
                runner.fail(lost)
                runner.part.counters["recovery failed"] += 1
                continue
            except ConnectionClosed:
                on_closed()
                return
            on_message(message)

    runner.group.spawn(read)


def _excerpt(message: str | bytes) -> str:
    """A message as the report quotes it: its ``repr``, cut after 60 characters."""
    return repr(message[:60]) + ("..." if len(message) > 60 else "")


class _EchoLoop:
    """One connection's closed loop, run by callbacks in gevent's hub.

    The connection hands each reply to :meth:`on_message`, which records it and sends
    the next message at once: no greenlet switch per message, which is most of what a
    round trip costs the tool in Python. The user's greenlet only watches for the end.
    """

    __slots__ = ("append", "conn", "done", "failure", "in_flight", "payload", "runner", "sent_at")

    def __init__(self, runner: Runner, conn: Client, payload: str | bytes) -> None:
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
        if self.in_flight and message == self.payload:
            self.append(clock() - self.sent_at)
            self.in_flight = False
            self.next()
        elif not self.done.is_set():
            if self.in_flight:
                wrong = f"answered {_excerpt(self.payload)} with {_excerpt(message)}"
            else:
                wrong = f"sent {_excerpt(message)} before it was sent anything"
            self.in_flight = False
            self.end(Mismatch(wrong))

    def on_closed(self) -> None:
        conn = self.conn
        self.end(ConnectionClosed.for_code(conn.close_code or 1006, conn.close_reason or ""))

    def end(self, failure: BaseException) -> None:
        if not self.done.is_set():
            self.failure = failure
            self.done.set()


def _echo_user(runner: Runner, mismatches: _Mismatches, index: int) -> None:
    payload = _payload(runner.options, index)
    timeout = runner.options.timeout
    backoff = Backoff(0.1, 2.0)  # jittered: users do not reconnect in step
    while runner.active:
        conn = runner.connect()
        if conn is None:
            runner.sleep(backoff.next())
            continue
        loop = _EchoLoop(runner, conn, payload)
        try:
            _deliver(runner, conn, loop.on_message, loop.on_closed)
            loop.next()
            # The loop runs in the hub; this greenlet watches for a reply that never comes.
            while not loop.done.wait(min(timeout, 1.0)):
                if loop.in_flight and clock() - loop.sent_at > timeout:
                    # A late echo may still arrive: only a new connection is in step again.
                    loop.end(TimeoutError("no echo within the timeout"))
            if loop.failure is None:
                backoff.reset()
            elif isinstance(loop.failure, Mismatch):
                mismatches.stopped(loop.failure)
                return
            else:
                runner.fail(loop.failure)
                runner.sleep(backoff.next())
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
        _deliver(runner, conn, _Receiver(runner, state, index).on_message, closed.set)
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


def _probe(runner: Runner, state: _Broadcasts, conn: Client) -> None:
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


def _message(options: LoadOptions, head: str) -> str | bytes:
    """A broadcast message: ``head`` padded to ``size``, text or binary."""
    text = head + "x" * max(0, options.size - len(head))
    return text.encode() if options.binary else text


def _send_broadcasts(runner: Runner, state: _Broadcasts, conn: Client) -> None:
    """Send numbered messages, at most ``window`` in flight; count the missing ones at the end.

    With ``--resume`` the sender may drop too: what it had in flight then may never have
    reached the server. If the window stalls after the sender came back, those are given
    up (still counted ``missing`` at the end if they never arrive) and sending goes on.
    """
    options = runner.options
    window, timeout = options.window, options.timeout
    counters = runner.part.counters
    sent = 0
    given_up: set[int] = set()
    comebacks = _reconnects(conn)

    def in_flight() -> int:
        late = sum(1 for seq in given_up if state.counts[seq] >= state.receivers)
        return sent - len(given_up) - (state.completed - late)

    while runner.active and runner.take():
        while runner.active and in_flight() >= window:
            state.progress.clear()
            if state.progress.wait(timeout):
                continue
            if _reconnects(conn) != comebacks:
                comebacks = _reconnects(conn)
                given_up.update(s for s in range(sent) if state.counts[s] < state.receivers)
                counters["given_up"] = len(given_up)
                continue
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
    while in_flight() > 0 and clock() < deadline:
        state.progress.clear()
        state.progress.wait(max(0.0, deadline - clock()))
    missing = sum(max(0, state.receivers - count) for count in state.counts)
    counters["missing"] = missing
    if missing:
        # Errors even after the end: a message lost then is lost all the same.
        runner.part.errors["missing"] += missing


def _reconnects(conn: Client) -> int:
    """How many times ``conn`` came back after a drop (0 for a plain one)."""
    return conn.reconnects if isinstance(conn, ResumingConnection) else 0


def _drain(runner: Runner, conn: Client) -> None:
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
    backoff = Backoff(0.1, 2.0)  # jittered: users do not reconnect in step
    while runner.active and runner.take():
        conn = runner.connect()
        if conn is None:
            runner.sleep(backoff.next())
            continue
        backoff.reset()
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

    def check(conn: Client) -> bool:
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
        self.connection: Client | None = None
        self._runner = runner

    @property
    def active(self) -> bool:
        """False once the run is over; long scripts may check it."""
        return self._runner.active

    def _conn(self) -> Client:
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
    backoff = Backoff(0.1, 2.0)  # jittered: users do not reconnect in step
    while runner.active:
        conn = client.connection = runner.connect()
        if conn is None:
            runner.sleep(backoff.next())
            continue
        try:
            if on_start is not None and not _call_counted(runner, on_start, client):
                runner.sleep(backoff.next())
                continue
            while runner.active and not conn.closed and runner.take():
                start = clock()
                if _call_counted(runner, user, client):
                    iterations(clock() - start)
                    backoff.reset()
                think = wait_time() if callable(wait_time) else wait_time
                runner.sleep(think)
            if conn.closed and runner.active:
                runner.sleep(backoff.next())  # lost: counted where it surfaced
            elif on_stop is not None:
                _call_counted(runner, on_stop, client)
        finally:
            runner.release(conn)
            client.connection = None


def scenario_for(options: LoadOptions) -> Scenario:
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
