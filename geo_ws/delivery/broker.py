"""Brokers: what carries an endpoint's sends to the other processes and hosts.

Every send goes through the endpoint's broker. The broker hands the message to this
process's connections first, at once, then forwards it to the other processes when
there are any; it never makes a sender wait for the network.

- :class:`MemoryBroker`, the default: one process, nothing to install.
- :class:`RedisBroker`: Redis pub/sub between gunicorn workers and hosts
  (``GEO_WS_BROKER_URL=redis://...``; needs ``pip install geo_ws[redis]``).

Channels, in a namespace ``NS`` (default ``geo_ws``):

- ``NS:all`` carries broadcasts and room messages of every endpoint. Every node
  subscribes to it and keeps what concerns its own connections: a room message costs
  a dictionary lookup on nodes without members, but joining or leaving a room never
  touches Redis and a connection that joined gets the very next message (per-room
  channels would race their SUBSCRIBE against the first publish, and lose messages
  in the meantime without anyone noticing).
- ``NS:node:NODE`` carries ``send_to`` and ``close`` for the connections of one node
  (ids are ``NODE.TOKEN``): one publish reaches the one process that holds the client.

An envelope is a small binary header and the raw payload (see
:class:`~geo_ws.protocol.envelope.Envelope`).
Every publisher numbers what it sends on each channel, so a receiver notices when
Redis pub/sub, which is at-most-once, drops messages (a reconnect, a subscriber
disconnected by ``client-output-buffer-limit``): it logs a warning, counts them in
:attr:`Broker.stats` and calls the ``broker_gap`` hooks.

Guarantees across processes: at-most-once, in each sender's order per channel
(broadcasts and room messages keep their mutual order; sends to one node keep
theirs), no global order between senders, and no loss without a report.
"""

from __future__ import annotations

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
from ..protocol.envelope import Envelope, Kind, Sequencer, channel_all, channel_of, close_payload
from ..protocol.frames import BytesLike, Opcode, parse_close
from ..protocol.outgoing import Outgoing
from .ids import node_id, node_of
from .redis_url import REDIS_SCHEMES, make_client
from .registry import Registry

if TYPE_CHECKING:
    import redis
    from redis.sentinel import Sentinel

__all__ = [
    "BROKER_EVENTS",
    "Broker",
    "BrokerStats",
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
    """Messages another process published that never reached this one."""

    origin: str
    """The publisher that numbered them."""
    channel: str
    """The channel they were lost on."""
    first: int
    """The first missing sequence number."""
    last: int
    """The last missing sequence number."""

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
    """Envelopes from other processes delivered here."""
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


class Broker:
    """Delivers an endpoint's sends: here at once, then to the other processes.

    The base class does the local part and receives envelopes; a subclass carries them
    between processes by implementing :meth:`_forward`, and feeds what it receives to
    :meth:`receive` (after its own checks, see :class:`RedisBroker`).
    """

    def __init__(self) -> None:
        self._registries: dict[str, list[Registry]] = {}
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

    def listen(self) -> None:
        """Receive from other processes from now on (a no-op here).

        Called when a connection opens, so that a process with no WebSocket (a
        ``--preload`` master, a worker serving HTTP only) subscribes to nothing.
        """

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

    # -- sending -------------------------------------------------------------------------

    def send_to(self, endpoint: str, connection_id: str, data: str | BytesLike) -> bool:
        """Send to one connection of ``endpoint``, wherever it is.

        Returns:
            ``True`` if a connection here took it, or if it was forwarded to the node
            that holds the id (which drops it if the client is gone); ``False`` if the
            id belongs to this process and is not connected.
        """
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
            How many connections of this process took it.
        """
        message = Outgoing(data)
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
    """

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
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()

    def check(self, origin: str, channel: str, seq: int) -> Gap | bool:
        """Record ``seq`` from ``origin`` on ``channel``.

        Returns:
            ``True`` if it is the next one (or the first heard from this origin),
            ``False`` for a duplicate or an old one (drop it), else the :class:`Gap`
            before it (deliver it).
        """
        key = (origin, channel)
        last = self._last.get(key)
        if last is not None and seq <= last:
            return False
        self._last[key] = seq
        self._last.move_to_end(key)
        if len(self._last) > self.capacity:
            self._last.popitem(last=False)
        if last is None or seq == last + 1:
            return True
        return Gap(origin, channel, last + 1, seq - 1)


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


class RedisBroker(Broker):
    """Carries sends between processes and hosts over Redis pub/sub.

    Needs ``pip install geo_ws[redis]`` (redis-py, imported on first use). One
    connection publishes, from one greenlet, in order; a dedicated one subscribes
    (without a socket timeout, with a ping every ``health_check_interval`` seconds
    when idle), from a listener greenlet that only queues messages on connections.
    Both reconnect by themselves, with a backoff from 0.1 s doubling to 5 s, reset on
    success, and full jitter (each delay drawn below that), so that the workers of a
    cluster do not all come back at the same moments after a Redis restart.
    While Redis is unreachable local delivery goes on; the messages for other
    processes that could not be published are counted and logged, and so are the
    ones other processes miss (see :class:`Gap`). What is published on the channels but
    is no valid envelope is dropped, counted in ``stats.malformed`` and logged (one
    record per 10 s at most); an error while handling one message loses that message
    only: the listener goes on.

    Args:
        url: a Redis URL (``redis://``, ``rediss://`` or ``unix://``), a Sentinel URL
            (``redis+sentinel://``, see :mod:`geo_ws.delivery.redis_url`) or a
            :class:`redis.sentinel.Sentinel`: then both connections follow a failover.
        service_name: the master's name, with a ``Sentinel``.
        namespace: prefix of the channels; apps sharing a Redis need different ones.
        health_check_interval: seconds between pings on an idle subscription; three
            unanswered intervals count as a lost connection.
        max_queue: envelopes that may wait to be published (while Redis is slow or
            down) before new ones are dropped and counted.
        subscribe_timeout: how long the first connection of a process waits for the
            subscription, so that it gets the broadcasts sent right after it connects.
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
        **redis_options: Any,
    ) -> None:
        super().__init__()
        self.url = url
        self.service_name = service_name
        self.namespace = namespace
        self.health_check_interval = health_check_interval
        self.max_queue = max_queue
        self.subscribe_timeout = subscribe_timeout
        self._redis_options = redis_options
        self._pid = 0
        self._reset()

    def _reset(self) -> None:
        """Start afresh in this process (again after a fork: nothing is shared)."""
        self._pid = os.getpid()
        self.stats = BrokerStats()
        self._sequencer = Sequencer(node_id())
        self._gaps = GapDetector()
        self._queue: deque[tuple[str, bytes]] = deque()
        self._queued = Event()
        self._idle = Event()
        self._idle.set()
        self._subscribed = Event()
        self._first_attempt = Event()
        self._publisher: Greenlet[Any, None] | None = None
        self._listener: Greenlet[Any, None] | None = None
        self._dropping = False
        self._commands: redis.Redis | None = None
        self._malformed = _RateLimitedLog(logging.WARNING)
        self._errors = _RateLimitedLog(logging.ERROR)

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

    # -- publishing ----------------------------------------------------------------------

    def _forward(
        self, node: str | None, kind: Kind, endpoint: str, target: str, opcode: int, payload: Any
    ) -> bool:
        self._check_process()
        channel = self.channel_all if node is None else self.channel_of(node)
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
        self._queue.append((channel, envelope))
        self._idle.clear()
        self._queued.set()
        if self._publisher is None:
            self._publisher = gevent.spawn(self._publish_loop)
            _publishing.add(self)
        return True

    def _publish_loop(self) -> None:
        """The publisher greenlet: publishes in order, in pipelined batches."""
        # A publish whose reply is lost is retried once: receivers drop the duplicate.
        client = self._client(1, socket_timeout=5.0, socket_connect_timeout=2.0)
        from redis import RedisError

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
                pipeline = client.pipeline(transaction=False)
                for channel, envelope in batch:
                    pipeline.publish(channel, envelope)
                pipeline.execute()
            except (RedisError, OSError) as error:
                self.stats.publish_failed += len(batch)
                lost += len(batch)
                if down_since is None:
                    down_since = gevent.get_hub().loop.now()
                    logger.warning(
                        "broker: cannot publish to Redis (%s): messages for other processes "
                        "are lost until it is back; local delivery goes on",
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

    def listen(self) -> None:
        """Subscribe, unless this process already did.

        The first call waits (at most ``subscribe_timeout``) for the subscription or
        its first failure, so that the first client gets what is sent right after.
        """
        self._check_process()
        if self._listener is None:
            self._listener = gevent.spawn(self._listen_loop)
            if gevent.getcurrent() is not gevent.get_hub():
                self._first_attempt.wait(self.subscribe_timeout)

    def _listen_loop(self) -> None:
        """The listener greenlet: subscribes, hands envelopes on, reconnects."""
        from redis import ConnectionError as RedisConnectionError
        from redis import RedisError

        client = self._client(0, socket_timeout=None, socket_connect_timeout=2.0)
        channels = (self.channel_all, self.channel_of(node_id()))
        backoff = Backoff()
        down_since: float | None = None
        loop = gevent.get_hub().loop
        while True:
            # cast: redis-py types pubsub() from 8.2 on, not before; the verdict must not
            # depend on the version installed.
            pubsub = cast(Any, client).pubsub()
            try:
                pubsub.subscribe(*channels)
                confirmed = 0
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
                        confirmed += 1
                        if confirmed == len(channels):
                            self._subscribed.set()
                            self._first_attempt.set()
                            backoff.reset()
                            if down_since is None:
                                logger.info("broker: subscribed to %s", ", ".join(channels))
                            else:
                                downtime = loop.now() - down_since
                                down_since = None
                                logger.warning(
                                    "broker: subscribed to Redis again after %.1fs", downtime
                                )
                                self._run_hooks("broker_reconnect", downtime)
            except Exception as error:
                if not isinstance(error, (RedisError, OSError)):
                    # A bug, here or in redis-py: it must not end cross-worker delivery.
                    self._errors.log("broker: the Redis listener failed", exc_info=True)
                self._subscribed.clear()
                self._first_attempt.set()
                if down_since is None:
                    down_since = loop.now()
                    self.stats.disconnects += 1
                    logger.warning(
                        "broker: lost the Redis subscription (%s): messages from other "
                        "processes are lost until it is back; local delivery goes on",
                        error,
                    )
                    self._run_hooks("broker_disconnect", error)
            finally:
                try:
                    pubsub.close()
                except (RedisError, OSError):
                    pass
            gevent.sleep(backoff.next())

    def _handle(self, channel: bytes, data: bytes) -> None:
        """Hand one published message on; whatever goes wrong stays with that message."""
        try:
            self._on_message(channel.decode(), data)
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
            envelope = Envelope.decode(data)
        except ValueError as error:
            self.stats.malformed += 1
            self._malformed.log(
                "broker: dropped a malformed message on %s (%d bytes): %s",
                channel,
                len(data),
                error,
            )
            return
        if envelope.origin == self._sequencer.origin:
            return  # delivered here already, before it was published
        verdict = self._gaps.check(envelope.origin, channel, envelope.seq)
        if verdict is False:
            self.stats.duplicates += 1
            return
        if isinstance(verdict, Gap):
            self.stats.gaps += 1
            self.stats.missed += verdict.count
            logger.warning(
                "broker: %d message(s) from %s on %s never arrived (seq %d-%d)",
                verdict.count,
                verdict.origin,
                verdict.channel,
                verdict.first,
                verdict.last,
            )
            self._run_hooks("broker_gap", verdict)
        self.stats.received += 1
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
