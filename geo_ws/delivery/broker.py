"""Brokers: what carries an endpoint's sends to the other processes and hosts.

Every send goes through the endpoint's broker. The broker hands the message to this
process's connections first, at once, then forwards it to the other processes when
there are any; it never makes a sender wait for the network.

- :class:`MemoryBroker`, the default: one process, nothing to install.
- :class:`RedisBroker`: Redis between gunicorn workers and hosts
  (``GEO_WS_BROKER_URL=redis://...``; needs ``pip install geo_ws[redis]``).

Channels, in a namespace ``NS`` (default ``geo_ws``):

- ``NS:all`` carries broadcasts and room messages of every endpoint. Every node
  subscribes to it and keeps what concerns its own connections: a room message costs
  a dictionary lookup on nodes without members, but joining or leaving a room never
  touches Redis and a connection that joined gets the very next message.
- ``NS:node:NODE`` carries ``send_to`` and ``close`` for the connections of one node
  (ids are ``NODE.TOKEN``): one publish reaches the one process that holds the client.
- ``NS:ep:KEY`` carries everything sent to the clients of an endpoint with recovery
  (``Registry.recovery``), local ones included: they get it from there, positioned.

Each channel has a log in Redis (a stream trimmed by size and age, see
:mod:`geo_ws.delivery.history`): a message is appended and published in one atomic step,
with an offset under an epoch. An envelope is a small binary header and the raw
payload (see :class:`~geo_ws.protocol.envelope.Envelope`), published tagged with its
position.

Guarantees across processes: a worker accepts no WebSocket before its subscription is
live (:meth:`Broker.listen`); it fills what its subscription missed from the logs, in
order and without duplicates, and catches up after every reconnect, so it gets every
message once, in each sender's order per channel, while the log holds it. What the
logs no longer hold, what Redis lost (a new epoch) and what a publisher dropped while
Redis was down (endpoints without recovery; recovery endpoints' messages wait and are
retried) is reported with counts: a warning, :attr:`Broker.stats` and the
``broker_gap`` hooks. No global order between senders.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import gevent
from gevent import Greenlet
from gevent.event import Event

from ..io.backoff import Backoff
from ..io.connection import Connection
from ..protocol.envelope import (
    Envelope,
    Kind,
    Sequencer,
    channel_all,
    channel_of,
    channel_of_endpoint,
    close_payload,
    recovery_endpoints,
    untag,
)
from ..protocol.frames import BytesLike, Opcode, parse_close
from ..protocol.outgoing import Outgoing
from .history import (
    APPEND_SCRIPT,
    Entry,
    HistoryChanged,
    MemoryLog,
    Position,
    Recovery,
    append_args,
    log_keys,
    read_log,
)
from .ids import node_id, node_of
from .redis_url import REDIS_SCHEMES, make_client
from .registry import Registry

if TYPE_CHECKING:
    import redis
    from redis import Redis
    from redis.sentinel import Sentinel

__all__ = [
    "BROKER_EVENTS",
    "Broker",
    "BrokerStats",
    "CHANNEL_HISTORY",
    "Gap",
    "GapDetector",
    "MemoryBroker",
    "RedisBroker",
    "flush_all",
    "get_broker",
]

logger = logging.getLogger("geo_ws")

F = TypeVar("F", bound=Callable[..., Any])

BROKER_EVENTS = ("broker_gap", "broker_disconnect", "broker_reconnect")
"""What :meth:`Broker.on` accepts: a gap (with a :class:`Gap`), a lost connection to the
transport (with the exception), a restored one (with the seconds it was down)."""


@dataclass(frozen=True)
class Gap:
    """Messages published that never reached this process.

    Either entries of a channel's log that were trimmed from the history before this
    process could read them (``origin`` is ``""``, ``first`` and ``last`` are offsets
    in the log), or numbers of one publisher that never reached the log (it dropped
    them while Redis was down, or they were in a history that was lost).
    """

    origin: str
    """The publisher that numbered them (``""``: offsets of the log)."""
    channel: str
    """The channel they were lost on."""
    first: int
    """The first missing number."""
    last: int
    """The last missing number."""

    @property
    def count(self) -> int:
        """How many messages are missing."""
        return self.last - self.first + 1


@dataclass
class BrokerStats:
    """Counters of one broker in one process (reset after a fork)."""

    published: int = 0
    """Envelopes handed to the transport."""
    publish_failed: int = 0
    """Envelopes for other processes lost here: transport unreachable, or queue full."""
    received: int = 0
    """Envelopes from the channels delivered here (a recovery endpoint's own included)."""
    repaired: int = 0
    """Of those, the ones read from the history (missed on the subscription)."""
    gaps: int = 0
    """How many times envelopes from another process were found missing."""
    missed: int = 0
    """Envelopes other processes published that never arrived here."""
    duplicates: int = 0
    """Envelopes received twice (a publish retried after an error) and dropped."""
    malformed: int = 0
    """Undecodable envelopes, dropped."""
    disconnects: int = 0
    """Times the subscription was lost."""
    histories_lost: int = 0
    """Times a log's history was lost (a new epoch: Redis restarted without what it held);
    what it held past this process's position is counted in ``missed`` only as far as
    its publishers' numbers tell."""
    rewinds: int = 0
    """Times a log's offsets went back under the same epoch (a failover to a replica
    that had not received the last writes): the reused offsets' messages are delivered
    here, not taken for ones seen already."""


class Broker:
    """Delivers an endpoint's sends: here at once, then to the other processes.

    The base class does the local part and receives envelopes; a subclass carries them
    between processes by implementing :meth:`_forward`, and feeds what it receives to
    :meth:`receive` (after its own checks, see :class:`RedisBroker`).
    """

    def __init__(self) -> None:
        self._registries: dict[str, list[Registry]] = {}
        self._recovery: dict[str, Recovery] = {}
        self._hooks: dict[str, list[Callable[..., Any]]] = {event: [] for event in BROKER_EVENTS}
        self.stats = BrokerStats()
        """This process's counters."""

    # -- set-up --------------------------------------------------------------------------

    def attach(self, registry: Registry) -> None:
        """Deliver what other processes send to ``registry.key`` to this registry too.

        Idempotent, and no I/O: :meth:`listen` starts receiving.
        """
        registries = self._registries.setdefault(registry.key, [])
        if registry not in registries:
            registries.append(registry)
        if registry.recovery is not None:
            self._recovery.setdefault(registry.key, registry.recovery)

    def listen(self) -> bool:
        """Receive from other processes from now on (a no-op here).

        Called before a WebSocket handshake is accepted, so that a process with no
        WebSocket (a ``--preload`` master, a worker serving HTTP only) subscribes to
        nothing.

        Returns:
            Whether receiving is live (else the handshake is refused).
        """
        return True

    def on(self, event: str) -> Callable[[F], F]:
        """Register a hook for ``event``, one of :data:`BROKER_EVENTS`.

        ``broker_gap`` hooks get a :class:`Gap`: the app may tell its clients to
        re-sync. Hooks run in the broker's listener: keep them short; an exception is
        logged and ignored.

        Raises:
            ValueError: an unknown event.
        """
        if event not in BROKER_EVENTS:
            raise ValueError(f"unknown broker event {event!r}: use one of {BROKER_EVENTS}")

        def decorator(fn: F) -> F:
            self._hooks[event].append(fn)
            return fn

        return decorator

    def _run_hooks(self, event: str, argument: Any) -> None:
        for hook in self._hooks[event]:
            try:
                hook(argument)
            except Exception:
                logger.exception("the %s hook %r failed", event, hook)

    def stop(self) -> None:
        """Stop receiving and publishing (a no-op here)."""

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until everything queued was published.

        Returns:
            Whether nothing is left to publish.
        """
        return True

    # -- history -------------------------------------------------------------------------

    def top(self, endpoint: str) -> Position:
        """The position of the newest entry of a recovery endpoint's log.

        May do I/O: call it from a connection's greenlet.

        Raises:
            KeyError: ``endpoint`` has no recovery here.
        """
        raise NotImplementedError

    def replay(self, endpoint: str, since: Position) -> list[Entry] | None:
        """The entries of a recovery endpoint's log after ``since``, in order.

        All of them: the caller keeps what concerns its client (broadcasts, its rooms,
        sends to and closes of its id).

        Returns:
            ``None`` when ``since`` is of another epoch, or when the log no longer holds
            the entry after it (trimmed).

        Raises:
            KeyError: ``endpoint`` has no recovery here.
        """
        raise NotImplementedError

    def _append(
        self, kind: Kind, endpoint: str, target: str, message: Outgoing | None, payload: Any
    ) -> int:
        """Put a send to a recovery endpoint in its log, for delivery from there.

        Returns:
            How many connections of this process it reached already.
        """
        raise NotImplementedError

    def _deliver_at(
        self,
        offset: int,
        kind: Kind,
        endpoint: str,
        target: str,
        message: Outgoing | None,
        payload: bytes,
    ) -> int:
        """Deliver an entry of a recovery endpoint's log to this process's connections,
        positioned at ``offset`` (``message``: ``None`` for a close, of ``payload``)."""
        if message is None:
            code, reason = parse_close(payload)
            return int(self._close_here(endpoint, target, code, reason))
        registries = self._registries.get(endpoint, ())
        if kind is Kind.SEND_TO:
            return sum(registry.deliver_to(target, message, offset) for registry in registries)
        room = target if kind is Kind.ROOM else None
        return sum(registry.deliver(message, room, offset=offset) for registry in registries)

    # -- sending -------------------------------------------------------------------------

    def send_to(self, endpoint: str, connection_id: str, data: str | BytesLike) -> bool:
        """Send to one connection of ``endpoint``, wherever it is.

        On a recovery endpoint every send goes to the endpoint's log, whatever the id:
        the node that holds the id when it comes out gets it (ids roam when clients
        resume).

        Returns:
            ``True`` if a connection here took it, or if it was forwarded to the node
            that holds the id (which drops it if the client is gone) or to the log;
            ``False`` if the id belongs to this process and is not connected.
        """
        if endpoint in self._recovery:
            message = Outgoing(data)
            self._append(Kind.SEND_TO, endpoint, connection_id, message, message.payload)
            return True
        connection = self._find(endpoint, connection_id)
        if connection is not None:
            return connection.send(data)
        node = node_of(connection_id)
        if not node or node == node_id():
            logger.debug("send_to %s: no such connection here", connection_id)
            return False
        message = Outgoing(data)
        return self._forward(
            node, Kind.SEND_TO, endpoint, connection_id, message.opcode, message.payload
        )

    def broadcast(self, endpoint: str, data: str | BytesLike, room: str | None = None) -> int:
        """Send to every connection of ``endpoint`` (or of its ``room``) everywhere.

        Returns:
            How many connections of this process took it (on a recovery endpoint with
            Redis: 0, they get it when it comes back from the log).
        """
        message = Outgoing(data)
        if endpoint in self._recovery:
            kind = Kind.BROADCAST if room is None else Kind.ROOM
            return self._append(kind, endpoint, room or "", message, message.payload)
        delivered = sum(
            registry.deliver(message, room) for registry in self._registries.get(endpoint, ())
        )
        kind = Kind.BROADCAST if room is None else Kind.ROOM
        self._forward(None, kind, endpoint, room or "", message.opcode, message.payload)
        return delivered

    def close(self, endpoint: str, connection_id: str, code: int = 1000, reason: str = "") -> bool:
        """Close one connection of ``endpoint``, wherever it is.

        Returns:
            As :meth:`send_to`.

        Raises:
            ValueError: ``code`` may not be sent in a Close frame.
        """
        payload = close_payload(code, reason)
        if endpoint in self._recovery:
            self._append(Kind.CLOSE, endpoint, connection_id, None, payload)
            return True
        if self._close_here(endpoint, connection_id, code, reason):
            return True
        node = node_of(connection_id)
        if not node or node == node_id():
            return False
        return self._forward(node, Kind.CLOSE, endpoint, connection_id, Opcode.CLOSE, payload)

    def _forward(
        self, node: str | None, kind: Kind, endpoint: str, target: str, opcode: int, payload: Any
    ) -> bool:
        """Carry a send to the other processes: to ``node``, or (``None``) to all.

        Returns:
            Whether it is on its way.
        """
        raise NotImplementedError

    # -- receiving -----------------------------------------------------------------------

    def receive(self, envelope: Envelope) -> int:
        """Deliver an envelope from another process (as :meth:`Envelope.decode` returned
        it) to this process's connections.

        Never blocks: connections queue what their sockets cannot take at once.

        Returns:
            How many connections it reached (or closed).
        """
        kind = envelope.kind
        if kind is Kind.BROADCAST or kind is Kind.ROOM:
            message = envelope.outgoing()
            room = envelope.target if kind is Kind.ROOM else None
            return sum(
                registry.deliver(message, room)
                for registry in self._registries.get(envelope.endpoint, ())
            )
        if kind is Kind.SEND_TO:
            connection = self._find(envelope.endpoint, envelope.target)
            return int(connection is not None and connection.send_outgoing(envelope.outgoing()))
        code, reason = parse_close(envelope.payload)
        return int(self._close_here(envelope.endpoint, envelope.target, code, reason))

    def _candidates(self, endpoint: str) -> Iterable[Registry]:
        """The registries of ``endpoint`` here; of every endpoint for ``""``."""
        if endpoint:
            return self._registries.get(endpoint, ())
        return itertools.chain.from_iterable(self._registries.values())

    def _find(self, endpoint: str, connection_id: str) -> Connection | None:
        for registry in self._candidates(endpoint):
            connection = registry.get(connection_id)
            if connection is not None:
                return connection
        return None

    def _close_here(self, endpoint: str, connection_id: str, code: int, reason: str) -> bool:
        for registry in self._candidates(endpoint):
            connection = registry.get(connection_id)
            if connection is not None:
                connection.request_close(code, reason)
                registry.remove(connection_id)
                return True
        return False


class MemoryBroker(Broker):
    """The default broker: one process, so local delivery is all there is.

    Nothing to install or configure. ``send_to`` an id of another process returns
    ``False``, as for any id that is not connected here.

    A recovery endpoint's log is kept in memory, under an epoch of this process; its
    sends are appended and delivered at once, positioned.
    """

    def __init__(self) -> None:
        super().__init__()
        self._logs: dict[str, MemoryLog] = {}
        self._pid = os.getpid()

    def _log(self, endpoint: str) -> MemoryLog:
        if self._pid != os.getpid():  # forked: a new process, a new history
            self._pid = os.getpid()
            self._logs.clear()
        log = self._logs.get(endpoint)
        if log is None:
            log = self._logs[endpoint] = MemoryLog(self._recovery[endpoint])
        return log

    def top(self, endpoint: str) -> Position:
        """The position of the newest entry of a recovery endpoint's log (no I/O)."""
        return self._log(endpoint).top()

    def replay(self, endpoint: str, since: Position) -> list[Entry] | None:
        """The entries of a recovery endpoint's log after ``since`` (no I/O); see
        :meth:`Broker.replay`."""
        return self._log(endpoint).replay(since)

    def _append(
        self, kind: Kind, endpoint: str, target: str, message: Outgoing | None, payload: Any
    ) -> int:
        opcode = Opcode.CLOSE if message is None else message.opcode
        offset = self._log(endpoint).append(kind, opcode, endpoint, target, bytes(payload))
        return self._deliver_at(offset, kind, endpoint, target, message, payload)

    def _forward(
        self, node: str | None, kind: Kind, endpoint: str, target: str, opcode: int, payload: Any
    ) -> bool:
        if node is not None:
            logger.debug("send_to %s: held by another process, and no broker reaches it", target)
        return False


class GapDetector:
    """Follows each origin's numbers on each channel; says what is missing.

    Args:
        capacity: how many ``(origin, channel)`` pairs to remember; the least recently
            heard are forgotten first (processes that are gone).
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._last: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()

    def is_new(self, origin: str, channel: str, seq: int) -> bool:
        """Whether ``seq`` from ``origin`` on ``channel`` is past what was recorded
        (without recording it)."""
        previous = self._last.get((origin, channel))
        return previous is None or seq > previous[0]

    def check(self, origin: str, channel: str, seq: int, counted: int = 0) -> Gap | bool:
        """Record ``seq`` from ``origin`` on ``channel``.

        Args:
            origin: the publisher.
            channel: the channel.
            seq: its number.
            counted: how many losses on ``channel`` were reported otherwise so far (by
                offsets of its log): a hole across a change of it is not reported
                again.

        Returns:
            ``True`` if it is the next one (or the first heard from this origin, or a
            hole counted already), ``False`` for a duplicate or an old one (drop it),
            else the :class:`Gap` before it (deliver it).
        """
        key = (origin, channel)
        previous = self._last.get(key)
        if previous is not None and seq <= previous[0]:
            return False
        self._last[key] = (seq, counted)
        self._last.move_to_end(key)
        if len(self._last) > self.capacity:
            self._last.popitem(last=False)
        if previous is None or seq == previous[0] + 1 or counted != previous[1]:
            return True
        return Gap(origin, channel, previous[0] + 1, seq - 1)


class _RateLimitedLog:
    """A log record that may recur with every message: at most one per ``interval``
    seconds, the next one saying how many were left out, so that garbage published on
    a channel, or a bug hit by every message, cannot flood the logs.

    Args:
        level: the records' level.
        interval: seconds between two records.
    """

    def __init__(self, level: int, interval: float = 10.0) -> None:
        self.level = level
        self.interval = interval
        self._next = float("-inf")
        self._left_out = 0

    def log(self, message: str, *args: object, exc_info: bool = False) -> None:
        """Log ``message % args`` to ``geo_ws`` unless one was logged less than ``interval``
        seconds ago."""
        now = time.monotonic()
        if now < self._next:
            self._left_out += 1
            return
        self._next = now + self.interval
        if self._left_out:
            message += f" (and {self._left_out} more like it left out of the log)"
            self._left_out = 0
        logger.log(self.level, message, *args, exc_info=exc_info)


CHANNEL_HISTORY = Recovery(size=10_000, age=60.0)
"""What the logs of ``NS:all`` and ``NS:node:NODE`` keep by default: enough to repair a
subscription lost for a while."""


class _Follower:
    """Where this process is in one channel's log."""

    __slots__ = ("counted", "epoch", "fresh", "offset")

    def __init__(self, top: Position) -> None:
        self.epoch: str | None = top.epoch or None
        """The log's epoch (``None``: nobody wrote it yet)."""
        self.offset = top.offset
        """The last offset delivered here (or the baseline)."""
        self.fresh = True
        """Baseline taken after subscribing: what the subscription brings at or below
        it was published after the subscription was live, and is delivered."""
        self.counted = 0
        """Offsets of this log reported lost (trimmed before this process read them)."""


class RedisBroker(Broker):
    """Carries sends between processes and hosts over Redis, without silent loss.

    Needs ``pip install geo_ws[redis]`` (redis-py, imported on first use). Every
    message for other processes is appended to its channel's log (a Redis stream,
    trimmed to ``history.size`` entries and ``history.age`` seconds) and published, in
    one atomic step (a Lua script, see :mod:`geo_ws.delivery.history`). Receivers
    follow each log's offsets: a hole in what the subscription brought (a reconnect,
    a subscriber dropped by ``client-output-buffer-limit``) is filled from the stream,
    in order, before what came after; only what the stream no longer holds is reported
    (:class:`Gap`, ``broker_gap``, :attr:`Broker.stats`). After each (re)subscription a
    node reads each log's top and catches up from where it was. A publish retried after
    a lost reply is dropped by its publisher's number.

    An endpoint with recovery has a log of its own (``NS:ep:KEY``) carrying everything
    sent to its clients, local ones included: they get it when it comes back from
    Redis, positioned, so every client sees one order. Its publishes are retried, in
    order, while Redis is down (up to ``max_queue``); other messages for other
    processes are dropped then and counted (local delivery goes on).

    One connection publishes, from one greenlet, in pipelined batches; a dedicated one
    subscribes (without a socket timeout, with a ping every ``health_check_interval``
    seconds when idle), from a listener greenlet that only queues messages on
    connections. Both reconnect by themselves, with a backoff from 0.1 s doubling to
    5 s, reset on success, and full jitter. What is published on the channels but is
    no valid envelope is dropped, counted in ``stats.malformed`` and logged (one record
    per 10 s at most); an error while handling one message loses that message only:
    the listener goes on.

    Args:
        url: a Redis URL (``redis://``, ``rediss://`` or ``unix://``), a Sentinel URL
            (``redis+sentinel://``, see :mod:`geo_ws.delivery.redis_url`) or a
            :class:`redis.sentinel.Sentinel`: then both connections follow a failover.
        service_name: the master's name, with a ``Sentinel``.
        namespace: prefix of the channels and keys; apps sharing a Redis need different
            ones.
        health_check_interval: seconds between pings on an idle subscription; three
            unanswered intervals count as a lost connection.
        max_queue: envelopes that may wait to be published (while Redis is slow or
            down) before new ones are dropped and counted.
        subscribe_timeout: how long :meth:`listen` waits for the subscription (then a
            handshake is refused with 503).
        history: how much the logs of the channels of endpoints without recovery keep
            (long enough to repair a reconnect).
        **redis_options: passed to :meth:`redis.Redis.from_url` (or to
            :meth:`~redis.sentinel.Sentinel.master_for`).
    """

    def __init__(
        self,
        url: str | Sentinel,
        *,
        service_name: str | None = None,
        namespace: str = "geo_ws",
        health_check_interval: float = 2.0,
        max_queue: int = 10_000,
        subscribe_timeout: float = 2.0,
        history: Recovery = CHANNEL_HISTORY,
        **redis_options: Any,
    ) -> None:
        super().__init__()
        self.url = url
        self.service_name = service_name
        self.namespace = namespace
        # What the channels of recovery endpoints start with: looked at per message.
        self._endpoint_prefix = channel_of_endpoint(namespace, "")
        self.health_check_interval = health_check_interval
        self.max_queue = max_queue
        self.subscribe_timeout = subscribe_timeout
        self.history = history
        self._redis_options = redis_options
        self._pid = 0
        self._reset()

    def _reset(self) -> None:
        """Start afresh in this process (again after a fork: nothing is shared)."""
        self._pid = os.getpid()
        self.stats = BrokerStats()
        self._sequencer = Sequencer(node_id())
        self._gaps = GapDetector()
        self._followers: dict[str, _Follower] = {}
        self._live: set[str] = set()
        self._pubsub: Any = None
        # channel, envelope, retried while Redis is down (recovery endpoints)
        self._queue: deque[tuple[str, bytes, bool]] = deque()
        self._queued = Event()
        self._idle = Event()
        self._idle.set()
        self._subscribed = Event()
        self._publisher: Greenlet[Any, None] | None = None
        self._listener: Greenlet[Any, None] | None = None
        self._dropping = False
        self._commands: redis.Redis | None = None
        self._malformed = _RateLimitedLog(logging.WARNING)
        self._errors = _RateLimitedLog(logging.ERROR)
        self._refusing = _RateLimitedLog(logging.ERROR)

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            self._reset()

    @property
    def channel_all(self) -> str:
        """The channel of broadcasts and room messages."""
        return channel_all(self.namespace)

    def channel_of(self, node: str) -> str:
        """The channel of ``send_to`` and ``close`` for the connections of ``node``."""
        return channel_of(self.namespace, node)

    def channel_of_endpoint(self, endpoint: str) -> str:
        """The channel of everything sent to the clients of a recovery endpoint."""
        return channel_of_endpoint(self.namespace, endpoint)

    def _channels(self) -> list[str]:
        """What this process subscribes to."""
        return [self.channel_all, self.channel_of(node_id())] + [
            self.channel_of_endpoint(endpoint) for endpoint in self._recovery
        ]

    def _client(self, retries: int, **options: Any) -> redis.Redis:
        """A client of its own; geo_ws does the backing off, redis-py retries at most once."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options = {"retry": Retry(NoBackoff(), retries), **options, **self._redis_options}
        return make_client(self.url, self.service_name, **options)

    def redis(self) -> redis.Redis:
        """This process's client for plain commands (sessions, presence), made on first use."""
        self._check_process()
        if self._commands is None:
            self._commands = self._client(1, socket_timeout=5.0, socket_connect_timeout=2.0)
        return self._commands

    def attach(self, registry: Registry) -> None:
        """As :meth:`Broker.attach`; a recovery endpoint's channel is subscribed to as
        well (at once if this process listens already)."""
        self._check_process()
        super().attach(registry)
        channel = self.channel_of_endpoint(registry.key)
        if registry.recovery is None or channel in self._live or self._pubsub is None:
            return
        self._subscribed.clear()  # until the new channel is live too
        from redis import RedisError

        try:
            self._pubsub.subscribe(channel)
        except (RedisError, OSError):
            pass  # the listener subscribes to every channel when it is back

    # -- history -------------------------------------------------------------------------

    def top(self, endpoint: str) -> Position:
        """The position of the newest entry of a recovery endpoint's log (reads Redis).

        Raises:
            KeyError: ``endpoint`` has no recovery here.
            redis.RedisError: Redis cannot be read.
        """
        self._recovery[endpoint]  # noqa: B018 (a KeyError for other endpoints)
        top, _ = read_log(self.redis(), self.channel_of_endpoint(endpoint), 1, 0)
        return top

    def replay(self, endpoint: str, since: Position) -> list[Entry] | None:
        """The entries of a recovery endpoint's log after ``since`` (reads Redis); see
        :meth:`Broker.replay`. A position of epoch ``""`` (taken before anything was
        written) replays the log from its first entry.

        Raises:
            KeyError: ``endpoint`` has no recovery here.
            redis.RedisError: Redis cannot be read.
        """
        self._recovery[endpoint]  # noqa: B018 (a KeyError for other endpoints)
        channel = self.channel_of_endpoint(endpoint)
        top, entries = read_log(self.redis(), channel, since.offset + 1)
        if since.epoch != top.epoch and (since.epoch or since.offset):
            return None
        if since.offset > top.offset:
            return None
        if since.offset == top.offset:
            return []
        if not entries or entries[0][0] != since.offset + 1:
            return None  # trimmed past it
        return [Entry(offset, Envelope.decode(data)) for offset, data in entries]

    # -- publishing ----------------------------------------------------------------------

    def _forward(
        self, node: str | None, kind: Kind, endpoint: str, target: str, opcode: int, payload: Any
    ) -> bool:
        channel = self.channel_all if node is None else self.channel_of(node)
        return self._enqueue(channel, kind, endpoint, target, opcode, payload, False)

    def _append(
        self, kind: Kind, endpoint: str, target: str, message: Outgoing | None, payload: Any
    ) -> int:
        opcode = Opcode.CLOSE if message is None else message.opcode
        channel = self.channel_of_endpoint(endpoint)
        self._enqueue(channel, kind, endpoint, target, opcode, payload, True)
        return 0  # local clients get it from the log

    def _enqueue(
        self,
        channel: str,
        kind: Kind,
        endpoint: str,
        target: str,
        opcode: int,
        payload: Any,
        retried: bool,
    ) -> bool:
        """Queue an envelope for the publisher greenlet.

        Returns:
            Whether it is queued (else the queue is full: dropped and counted).
        """
        self._check_process()
        # Numbered even when dropped below, so that receivers see the gap too.
        envelope = self._sequencer.envelope(channel, kind, endpoint, target, opcode, payload)
        if len(self._queue) >= self.max_queue:
            self.stats.publish_failed += 1
            if not self._dropping:
                self._dropping = True
                logger.warning(
                    "broker: %d messages wait for Redis: dropping new ones for other processes",
                    len(self._queue),
                )
            return False
        self._queue.append((channel, envelope, retried))
        self._idle.clear()
        self._queued.set()
        if self._publisher is None:
            self._publisher = gevent.spawn(self._publish_loop)
            _publishing.add(self)
        return True

    def _script_args(self, channel: str, envelope: bytes) -> list[Any]:
        endpoint = self._endpoint_of(channel)
        if endpoint is not None:
            return append_args(channel, envelope, self._recovery[endpoint])
        return append_args(channel, envelope, self.history)

    def _endpoint_of(self, channel: str) -> str | None:
        """The recovery endpoint whose log ``channel`` is (``None``: another channel)."""
        if channel.startswith(self._endpoint_prefix):
            return channel[len(self._endpoint_prefix) :]
        return None

    def _publish_batch(self, client: Redis, batch: list[tuple[str, bytes, bool]]) -> None:
        """Append and publish a batch in one round trip (loading the script if Redis lost
        it: a restart)."""
        from redis.exceptions import NoScriptError

        for attempt in (1, 2):
            pipeline = client.pipeline(transaction=False)
            for channel, envelope, _ in batch:
                pipeline.evalsha(
                    _APPEND_SHA, 3, *log_keys(channel), *self._script_args(channel, envelope)
                )
            try:
                pipeline.execute()
                return
            except NoScriptError:
                if attempt == 2:
                    raise
                client.script_load(APPEND_SCRIPT)

    def _publish_loop(self) -> None:
        """The publisher greenlet: publishes in order, in pipelined batches."""
        # A publish whose reply is lost is retried: receivers drop the duplicate.
        client = self._client(1, socket_timeout=5.0, socket_connect_timeout=2.0)
        from redis import ConnectionError as RedisConnectionError
        from redis import RedisError
        from redis import TimeoutError as RedisTimeoutError

        backoff = Backoff()
        down_since: float | None = None
        lost = 0
        queue = self._queue
        while True:
            if not queue:
                self._idle.set()
                self._queued.clear()
                self._queued.wait()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), 256))]
            try:
                self._publish_batch(client, batch)
            except (RedisError, OSError) as error:
                # Redis down: a recovery endpoint's messages wait, in order; a refused
                # script (a bug) would only fail again.
                transient = isinstance(error, (RedisConnectionError, RedisTimeoutError, OSError))
                retried = [item for item in batch if item[2] and transient]
                queue.extendleft(reversed(retried))
                self.stats.publish_failed += len(batch) - len(retried)
                lost += len(batch) - len(retried)
                if down_since is None:
                    down_since = gevent.get_hub().loop.now()
                    logger.warning(
                        "broker: cannot publish to Redis (%s): messages for other processes "
                        "are lost until it is back, but for endpoints with recovery (they "
                        "wait); local delivery goes on",
                        error,
                    )
                gevent.sleep(backoff.next())
                continue
            self.stats.published += len(batch)
            backoff.reset()
            self._dropping = False
            if down_since is not None:
                logger.warning(
                    "broker: publishing to Redis again after %.1fs; %d message(s) for other "
                    "processes were lost meanwhile",
                    gevent.get_hub().loop.now() - down_since,
                    lost,
                )
                down_since, lost = None, 0

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until everything queued was published."""
        self._check_process()
        return self._idle.wait(timeout)

    # -- subscribing ---------------------------------------------------------------------

    def listen(self) -> bool:
        """Subscribe, unless this process already did, and wait (at most
        ``subscribe_timeout``) until the subscription is live.

        Returns:
            Whether it is live: a WebSocket accepted before could miss messages, so the
            handshake is refused then (logged).
        """
        self._check_process()
        if self._listener is None:
            self._listener = gevent.spawn(self._listen_loop)
        if self._subscribed.is_set():
            return True
        if gevent.getcurrent() is not gevent.get_hub() and self._subscribed.wait(
            self.subscribe_timeout
        ):
            return True
        self._refusing.log(
            "broker: not subscribed to Redis at %s after %.1fs: refusing WebSockets until it is",
            self.url,
            self.subscribe_timeout,
        )
        return False

    def _listen_loop(self) -> None:
        """The listener greenlet: subscribes, catches up, hands envelopes on, reconnects."""
        from redis import ConnectionError as RedisConnectionError
        from redis import RedisError

        client = self._client(0, socket_timeout=None, socket_connect_timeout=2.0)
        backoff = Backoff()
        down_since: float | None = None
        loop = gevent.get_hub().loop
        while True:
            # cast: redis-py types pubsub() from 8.2 on, not before; the verdict must not
            # depend on the version installed.
            pubsub = self._pubsub = cast(Any, client).pubsub()
            try:
                pubsub.subscribe(*self._channels())
                heard = loop.now()
                while True:
                    message = pubsub.get_message(timeout=self.health_check_interval)
                    if message is None:
                        if loop.now() - heard > 3 * self.health_check_interval:
                            raise RedisConnectionError("Redis stopped answering pings")
                        pubsub.ping()
                        continue
                    heard = loop.now()
                    if message["type"] == "message":
                        self._handle(message["channel"], message["data"])
                    elif message["type"] == "subscribe":
                        channel = message["channel"].decode()
                        self._catch_up(channel)
                        self._live.add(channel)
                        if self._subscribed.is_set() or not self._live.issuperset(self._channels()):
                            continue
                        self._subscribed.set()
                        backoff.reset()
                        if down_since is None:
                            logger.info("broker: subscribed to %s", ", ".join(self._live))
                        else:
                            downtime = loop.now() - down_since
                            down_since = None
                            logger.warning(
                                "broker: subscribed to Redis again after %.1fs, and caught up",
                                downtime,
                            )
                            self._run_hooks("broker_reconnect", downtime)
            except Exception as error:
                if not isinstance(error, (RedisError, OSError, HistoryChanged)):
                    # A bug, here or in redis-py: it must not end cross-worker delivery.
                    self._errors.log("broker: the Redis listener failed", exc_info=True)
                self._subscribed.clear()
                self._live.clear()
                if down_since is None:
                    down_since = loop.now()
                    self.stats.disconnects += 1
                    logger.warning(
                        "broker: lost the Redis subscription (%s): messages from other "
                        "processes wait in the history until it is back; local delivery "
                        "goes on",
                        error,
                    )
                    self._run_hooks("broker_disconnect", error)
            finally:
                self._pubsub = None
                try:
                    pubsub.close()
                except (RedisError, OSError):
                    pass
            gevent.sleep(backoff.next())

    def _catch_up(self, channel: str) -> None:
        """The subscription to ``channel`` is live: deliver what its log got since this
        process's position (the first time: take its top as the baseline).

        Raises:
            redis.RedisError: Redis cannot be read (the listener subscribes again).
        """
        client = self.redis()
        endpoint = self._endpoint_of(channel)
        if endpoint is not None:
            # Tell Emitters where this endpoint's sends go, and how much its log keeps:
            # the window of the servers running now, not of whoever appended last.
            recovery = self._recovery[endpoint]
            pipeline = client.pipeline(transaction=False)
            pipeline.sadd(recovery_endpoints(self.namespace), endpoint)
            pipeline.hset(
                log_keys(channel)[0],
                mapping={"size": recovery.size, "age": int(recovery.age * 1000)},
            )
            pipeline.execute()
        follower = self._followers.get(channel)
        top, _ = read_log(client, channel, 1, 0)
        if follower is None:
            self._followers[channel] = _Follower(top)
            return
        if (top.epoch or None) != follower.epoch:
            self._new_epoch(channel, follower, top.epoch)
        self._fill(channel, follower, top.offset)

    def _new_epoch(self, channel: str, follower: _Follower, epoch: str) -> None:
        """``channel``'s log has another history now: what the lost one held past this
        process's position is unknowable (its publishers' numbers tell what they can)."""
        if follower.epoch is not None:
            self.stats.histories_lost += 1
            logger.warning(
                "broker: the history of %s was lost (Redis restarted without it?): what "
                "was published on it after offset %d and did not arrive is unknowable; "
                "holes in its publishers' numbers are reported as they publish again",
                channel,
                follower.offset,
            )
        follower.epoch = epoch or None
        follower.offset = 0
        follower.fresh = False

    def _rewound(self, channel: str, follower: _Follower, offset: int) -> None:
        """A message never seen here came at an offset already passed: the log went back
        (Redis replication is asynchronous: a replica promoted before it had the last
        writes numbers again from where it was). Follow it from there."""
        self.stats.rewinds += 1
        logger.warning(
            "broker: the history of %s went back from offset %d to %d under the same epoch "
            "(a failover to a replica that lagged?): following it from there; clients "
            "resuming across it may miss messages unknowingly (see docs/deployment.md)",
            channel,
            follower.offset,
            offset,
        )
        follower.offset = offset - 1

    def _fill(self, channel: str, follower: _Follower, last: int) -> None:
        """Deliver the entries of ``channel``'s log after ``follower.offset`` up to
        ``last`` from the stream, in order; report what it no longer holds.

        Raises:
            HistoryChanged: the log has another epoch than ``follower``'s.
            redis.RedisError: Redis cannot be read.
        """
        first = follower.offset + 1
        if last < first:
            return
        top, entries = read_log(self.redis(), channel, first, last)
        if (top.epoch or None) != follower.epoch:
            raise HistoryChanged(channel)
        for offset, data in entries:
            if offset > follower.offset + 1:
                self._lost(channel, follower, offset - 1)
            follower.offset = offset
            try:
                envelope = Envelope.decode(data)
            except ValueError:
                self.stats.malformed += 1
                continue
            self.stats.repaired += 1
            self._accept(channel, follower, offset, envelope)
        if follower.offset < last:
            self._lost(channel, follower, last)

    def _lost(self, channel: str, follower: _Follower, last: int) -> None:
        """The entries after ``follower.offset`` up to ``last`` are gone from the stream."""
        gap = Gap("", channel, follower.offset + 1, last)
        follower.offset = last
        follower.counted += gap.count
        self._report(gap, "no longer in the history: offsets")

    def _report(self, gap: Gap, what: str) -> None:
        self.stats.gaps += 1
        self.stats.missed += gap.count
        logger.warning(
            "broker: %d message(s) %son %s never arrived (%s %d-%d)",
            gap.count,
            f"from {gap.origin} " if gap.origin else "",
            gap.channel,
            what,
            gap.first,
            gap.last,
        )
        self._run_hooks("broker_gap", gap)

    def _handle(self, channel: bytes, data: bytes) -> None:
        """Hand one published message on; whatever goes wrong stays with that message,
        but for Redis failing while a hole is filled (then the listener subscribes again,
        and catches up)."""
        from redis import RedisError

        try:
            self._on_message(channel.decode(), data)
        except (RedisError, OSError, HistoryChanged):
            raise
        except Exception:
            # A bug, here or in an app's connection: this message is lost, not the next ones.
            self._errors.log(
                "broker: a message on %s (%d bytes) was lost: handling it failed",
                channel,
                len(data),
                exc_info=True,
            )

    def _on_message(self, channel: str, data: bytes) -> None:
        try:
            epoch, offset, raw = untag(data)
            envelope = Envelope.decode(raw)
        except ValueError as error:
            self.stats.malformed += 1
            self._malformed.log(
                "broker: dropped a malformed message on %s (%d bytes): %s",
                channel,
                len(data),
                error,
            )
            return
        follower = self._followers[channel]
        if epoch != follower.epoch:
            self._new_epoch(channel, follower, epoch)
        elif offset <= follower.offset:
            if follower.fresh:  # published after the subscription was live
                self._accept(channel, follower, offset, envelope)
                follower.fresh = offset < follower.offset
                return
            # This process's own messages on the other logs were delivered before they
            # were published, and never recorded.
            own = envelope.origin == self._sequencer.origin and not channel.startswith(
                self._endpoint_prefix
            )
            if own or not self._gaps.is_new(envelope.origin, channel, envelope.seq):
                return  # read from the history already
            self._rewound(channel, follower, offset)
        self._fill(channel, follower, offset - 1)
        follower.offset = offset
        follower.fresh = False
        self._accept(channel, follower, offset, envelope)

    def _accept(self, channel: str, follower: _Follower, offset: int, envelope: Envelope) -> None:
        """Deliver an envelope at its place in its log, unless it is a duplicate."""
        endpoint_log = channel.startswith(self._endpoint_prefix)
        if not endpoint_log and envelope.origin == self._sequencer.origin:
            return  # delivered here already, before it was published
        verdict = self._gaps.check(envelope.origin, channel, envelope.seq, follower.counted)
        if verdict is False:
            self.stats.duplicates += 1
            return
        if isinstance(verdict, Gap):
            self._report(verdict, "seq")
        self.stats.received += 1
        if endpoint_log:
            message = None if envelope.kind is Kind.CLOSE else envelope.outgoing()
            self._deliver_at(
                offset, envelope.kind, envelope.endpoint, envelope.target, message, envelope.payload
            )
        else:
            self.receive(envelope)

    def wait_subscribed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the subscription is in place."""
        self._check_process()
        return self._subscribed.wait(timeout)

    def stop(self) -> None:
        """Stop the listener and the publisher (what is queued is dropped)."""
        for greenlet in (self._listener, self._publisher):
            if greenlet is not None:
                greenlet.kill(block=True, timeout=2)
        self._listener = self._publisher = None
        self._queue.clear()
        self._subscribed.clear()
        self._live.clear()


_APPEND_SHA = hashlib.sha1(APPEND_SCRIPT.encode()).hexdigest()


_by_url: dict[str, Broker] = {}
_publishing: weakref.WeakSet[RedisBroker] = weakref.WeakSet()


def flush_all(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds until every broker of this process has published
    what it queued (before a worker exits).

    Returns:
        Whether nothing is left to publish.
    """
    deadline = gevent.get_hub().loop.now() + timeout
    return all(
        broker.flush(max(0.0, deadline - gevent.get_hub().loop.now()))
        for broker in list(_publishing)
    )


def get_broker(choice: Broker | str | None) -> Broker:
    """The broker for an endpoint's ``broker=`` option or a configured URL.

    ``None`` or ``""`` give a new :class:`MemoryBroker`, and so does ``memory://``;
    ``redis://``, ``rediss://``, ``unix://`` and ``redis+sentinel://`` URLs give one
    :class:`RedisBroker` per URL and process, shared by the endpoints that name it.

    Raises:
        ValueError: a URL with another scheme.
    """
    if isinstance(choice, Broker):
        return choice
    if not choice or choice.startswith("memory://"):
        return MemoryBroker()
    if not choice.startswith(REDIS_SCHEMES):
        schemes = ", ".join(REDIS_SCHEMES)
        raise ValueError(f"no broker for {choice!r}: use {schemes} or memory://")
    broker = _by_url.get(choice)
    if broker is None:
        broker = _by_url[choice] = RedisBroker(choice)
    return broker
