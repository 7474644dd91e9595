"""Histories (geo_ws.delivery.history): the in-memory log, the MemoryBroker's recovery
endpoints, and the Redis logs with a real redis-server (offsets, trimming, epochs,
replay, duplicates, repair across workers and faults)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
import redis
from gevent.event import Event

from geo_ws import Emitter
from geo_ws.delivery.broker import Gap, MemoryBroker, RedisBroker
from geo_ws.delivery.history import (
    APPEND_SCRIPT,
    Entry,
    MemoryLog,
    Position,
    Recovery,
    append_args,
    log_keys,
)
from geo_ws.delivery.registry import Registry
from geo_ws.protocol.envelope import Envelope, Kind, Sequencer, channel_of_endpoint
from geo_ws.protocol.frames import Opcode
from geo_ws.protocol.outgoing import Outgoing
from tests.delivery.test_broker import LogWatcher, Queueing, Recorder, stop_brokers
from tests.helpers import WAIT
from tests.live_apps.process import ServerProcess
from tests.live_apps.redis_server import RedisServer, namespace, redis_server

__all__ = ["redis_server", "stop_brokers"]  # the fixtures, imported for pytest


def envelope(text: str, kind: Kind = Kind.BROADCAST, target: str = "") -> Envelope:
    return Envelope(kind, Opcode.TEXT, "/ws", target, text.encode())


def append(log: MemoryLog, text: str) -> int:
    sent = envelope(text)
    return log.append(sent.kind, sent.opcode, sent.endpoint, sent.target, sent.payload)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the in-memory log ------------------------------------------------------------------


def test_recovery_refuses_an_empty_window() -> None:
    with pytest.raises(ValueError):
        Recovery(size=0)
    with pytest.raises(ValueError):
        Recovery(age=0)


def test_the_memory_log_numbers_from_one_and_replays_what_follows_a_position() -> None:
    log = MemoryLog(Recovery(size=10))
    assert log.top() == Position(log.epoch, 0)
    assert log.replay(Position(log.epoch, 0)) == []
    offsets = [append(log, f"m{number}") for number in range(1, 4)]
    assert offsets == [1, 2, 3] and log.top() == Position(log.epoch, 3)
    assert log.replay(Position(log.epoch, 1)) == [
        Entry(2, envelope("m2")),
        Entry(3, envelope("m3")),
    ]
    assert log.replay(Position(log.epoch, 3)) == []
    assert log.replay(Position(log.epoch, 4)) is None  # from the future
    assert log.replay(Position("another", 1)) is None
    assert MemoryLog(Recovery()).epoch != log.epoch  # each history its own


def test_the_memory_log_is_trimmed_by_size_and_by_age() -> None:
    clock = Clock()
    log = MemoryLog(Recovery(size=3, age=10.0), clock)
    for number in range(1, 6):
        append(log, f"m{number}")
    entries = log.replay(Position(log.epoch, 2))
    assert entries is not None and [entry.offset for entry in entries] == [3, 4, 5]
    assert log.replay(Position(log.epoch, 1)) is None  # 2 is gone: size 3
    clock.now += 5
    append(log, "m6")
    clock.now += 6  # 3-5 are 11 s old, 6 is 6 s old
    assert log.replay(Position(log.epoch, 2)) is None
    entries = log.replay(Position(log.epoch, 5))
    assert entries is not None and [entry.offset for entry in entries] == [6]
    clock.now += 5
    assert log.replay(Position(log.epoch, 6)) == []  # nothing missed: nothing to hold
    assert log.replay(Position(log.epoch, 5)) is None


# -- the MemoryBroker's recovery endpoints ----------------------------------------------


def framed(message: Outgoing, offset: int) -> Outgoing:
    return Outgoing(f"{offset}:{bytes(message.payload).decode()}")


def test_the_memory_broker_logs_and_delivers_a_recovery_endpoint_positioned() -> None:
    broker = MemoryBroker()
    registry = Registry("/ws", Recovery(size=100))
    plain, resuming = Recorder(), Recorder()
    registry.add("n.1", plain)  # type: ignore[arg-type]
    registry.add("n.2", resuming, framer=framed)  # type: ignore[arg-type]
    broker.attach(registry)
    registry.join("n.2", "lobby")
    assert broker.broadcast("/ws", "all") == 2  # synchronous, as without recovery
    assert broker.broadcast("/ws", "lobby", room="lobby") == 1
    assert broker.send_to("/ws", "n.1", "one")
    assert broker.send_to("/ws", "gone.9", "logged for whoever comes back with it")
    assert plain.messages == ["all", "one"]
    assert resuming.messages == ["1:all", "2:lobby"]
    epoch = broker.top("/ws").epoch
    assert broker.top("/ws") == Position(epoch, 4)
    entries = broker.replay("/ws", Position(epoch, 1))
    assert entries is not None
    assert [(entry.offset, entry.envelope.kind, entry.envelope.target) for entry in entries] == [
        (2, Kind.ROOM, "lobby"),
        (3, Kind.SEND_TO, "n.1"),
        (4, Kind.SEND_TO, "gone.9"),
    ]
    assert broker.close("/ws", "n.1", 4000, "bye")
    assert plain.closed == (4000, "bye") and "n.1" not in registry
    assert broker.top("/ws") == Position(epoch, 5)
    # Endpoints without recovery keep no log.
    other = Registry("/plain")
    broker.attach(other)
    assert broker.broadcast("/plain", "x") == 0
    with pytest.raises(KeyError):
        broker.top("/plain")


def test_a_resume_holds_replays_and_releases_without_loss_or_repeat() -> None:
    broker = MemoryBroker()
    registry = Registry("/ws", Recovery())
    broker.attach(registry)
    broker.broadcast("/ws", "before")
    since = broker.top("/ws")
    broker.broadcast("/ws", "missed")
    client = Recorder()
    registry.add("n.1", client, framer=framed)  # type: ignore[arg-type]
    registry.hold("n.1")
    broker.broadcast("/ws", "during")  # while the replay is read
    entries = broker.replay("/ws", since)
    assert entries is not None
    for entry in entries:
        client.send_outgoing(framed(entry.envelope.outgoing(), entry.offset))
    broker.broadcast("/ws", "after the replay")
    assert [entry.offset for entry in entries] == [2, 3]
    assert registry.release("n.1", entries[-1].offset) == 1  # 3 was held and replayed
    broker.broadcast("/ws", "live")
    assert client.messages == ["2:missed", "3:during", "4:after the replay", "5:live"]


# -- the Redis logs, with a real redis-server -------------------------------------------


def subscribed(
    url: str, stop_brokers: list[RedisBroker], *registries: Registry, **options: object
) -> RedisBroker:
    """A RedisBroker with ``registries`` attached, subscribed."""
    options.setdefault("namespace", namespace())
    broker = RedisBroker(url, **options)  # type: ignore[arg-type]
    stop_brokers.append(broker)
    for registry in registries:
        broker.attach(registry)
    assert broker.listen()
    return broker


def recovering(*names: str, recovery: Recovery | None = None) -> tuple[Registry, list[Queueing]]:
    """A registry of ``/ws`` with recovery, and clients that frame what they get."""
    registry = Registry("/ws", recovery or Recovery())
    clients = [Queueing() for _ in names]
    for name, client in zip(names, clients, strict=True):
        registry.add(name, client, framer=framed)  # type: ignore[arg-type]
    return registry, clients


def take(client: Queueing, count: int) -> list[str | bytes]:
    return [client.queue.get(timeout=WAIT) for _ in range(count)]


def offsets(entries: list[Entry] | None) -> list[int]:
    assert entries is not None
    return [entry.offset for entry in entries]


def test_a_recovery_log_in_redis_numbers_positions_replays_and_trims_by_size(
    redis_server: RedisServer, stop_brokers: list[RedisBroker]
) -> None:
    registry, (client,) = recovering("n.1", recovery=Recovery(size=100, age=60))
    broker = subscribed(redis_server.url, stop_brokers, registry)
    assert broker.top("/ws") == Position("", 0)  # nobody wrote it yet
    for number in range(1, 501):
        assert broker.broadcast("/ws", f"m{number}") == 0  # delivered from the log
    assert take(client, 500) == [f"{number}:m{number}" for number in range(1, 501)]
    top = broker.top("/ws")
    assert top.offset == 500 and top.epoch
    assert offsets(broker.replay("/ws", Position(top.epoch, 450))) == list(range(451, 501))
    entries = broker.replay("/ws", Position(top.epoch, 498))
    assert entries is not None and entries[0].envelope.payload == b"m499"
    assert broker.replay("/ws", top) == []
    assert broker.replay("/ws", Position(top.epoch, 1)) is None  # trimmed: about 100 kept
    assert broker.replay("/ws", Position("", 0)) is None  # from the start: trimmed too
    assert broker.replay("/ws", Position("another", 450)) is None
    assert broker.replay("/ws", Position(top.epoch, 501)) is None
    kept = broker.redis().xlen(log_keys(broker.channel_of_endpoint("/ws"))[1])
    assert 100 <= kept < 500
    with pytest.raises(KeyError):
        broker.top("/plain")


def test_a_log_in_redis_is_trimmed_by_age(
    redis_server: RedisServer, stop_brokers: list[RedisBroker]
) -> None:
    registry, (client,) = recovering("n.1", recovery=Recovery(size=1000, age=0.3))
    broker = subscribed(redis_server.url, stop_brokers, registry)
    for number in range(3):
        broker.broadcast("/ws", f"old {number}")
    assert len(take(client, 3)) == 3
    gevent.sleep(0.5)  # ages are time: let the first three grow older than 0.3 s
    broker.broadcast("/ws", "new")
    assert take(client, 1) == ["4:new"]
    epoch = broker.top("/ws").epoch
    assert broker.replay("/ws", Position(epoch, 0)) is None
    assert offsets(broker.replay("/ws", Position(epoch, 3))) == [4]
    stream = log_keys(broker.channel_of_endpoint("/ws"))[1]
    assert broker.redis().xlen(stream) == 1
    assert 0 < broker.redis().pttl(stream) <= 330  # gone with its last entry's age


@pytest.fixture
def commands(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of the test's Redis, to do what a server or a failure would."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def test_a_lost_history_is_a_new_epoch_and_a_retried_publish_is_delivered_once(
    redis_server: RedisServer, stop_brokers: list[RedisBroker], commands: redis.Redis
) -> None:
    registry, (client,) = recovering("n.1")
    broker = subscribed(redis_server.url, stop_brokers, registry)
    channel = broker.channel_of_endpoint("/ws")
    broker.broadcast("/ws", "first")
    assert take(client, 1) == ["1:first"]
    before = broker.top("/ws")
    # A publish whose reply was lost, sent again: two entries, one delivery.
    envelope = Sequencer("elsewhere").envelope(channel, Kind.BROADCAST, "/ws", "", 1, b"twice")
    for _ in range(2):
        commands.eval(APPEND_SCRIPT, 3, *log_keys(channel), *append_args(channel, envelope, None))
    broker.broadcast("/ws", "after")
    assert take(client, 2) == ["2:twice", "4:after"]
    assert broker.stats.duplicates == 1
    with LogWatcher("the history of .* was lost") as log:
        commands.delete(*log_keys(channel))  # as a Redis restarted without it
        broker.broadcast("/ws", "new history")
        assert take(client, 1) == ["1:new history"]
        assert log.seen.wait(WAIT)
    after = broker.top("/ws")
    assert after.epoch != before.epoch and after.offset == 1
    assert broker.replay("/ws", before) is None
    assert offsets(broker.replay("/ws", Position(after.epoch, 0))) == [1]
    assert broker.stats.histories_lost == 1 and broker.stats.missed == 0


def test_a_log_gone_back_under_its_epoch_is_followed_not_taken_for_repeats(
    redis_server: RedisServer, stop_brokers: list[RedisBroker], commands: redis.Redis
) -> None:
    registry, (client,) = recovering("n.1")
    broker = subscribed(redis_server.url, stop_brokers, registry)
    channel = broker.channel_of_endpoint("/ws")
    for text in ("one", "two", "three"):
        broker.broadcast("/ws", text)
    assert take(client, 3) == ["1:one", "2:two", "3:three"]
    # As a replica promoted before it had the last two writes: same epoch, offset 1.
    commands.hset(log_keys(channel)[0], "offset", 1)
    with LogWatcher("went back from offset 3 to 2") as log:
        broker.broadcast("/ws", "after the failover")
        broker.broadcast("/ws", "and on")
        assert take(client, 2) == ["2:after the failover", "3:and on"]
        assert log.seen.wait(WAIT)
    assert broker.stats.rewinds == 1 and broker.stats.duplicates == 0


def test_the_servers_running_now_set_the_window_emitters_append_with(
    redis_server: RedisServer, stop_brokers: list[RedisBroker], commands: redis.Redis
) -> None:
    space = namespace()
    meta = log_keys(channel_of_endpoint(space, "/ws"))[0]
    # The window of an earlier run of the app (half a second), left in Redis.
    commands.hset(meta, mapping={"size": 2, "age": 500})
    registry, (client,) = recovering("n.1", recovery=Recovery(size=100, age=60))
    subscribed(redis_server.url, stop_brokers, registry, namespace=space)
    assert commands.hmget(meta, "size", "age") == [b"100", b"60000"]
    emitter = Emitter(redis_server.url, namespace=space)
    emitter.broadcast("/ws", "kept for a minute")
    emitter.disconnect()
    assert take(client, 1) == ["1:kept for a minute"]
    assert commands.hmget(meta, "size", "age") == [b"100", b"60000"]


# A process that broadcasts COUNT numbered messages to /ws through an Emitter.
EMITTING = """
import sys
from geo_ws import Emitter
emitter = Emitter(sys.argv[1], namespace=sys.argv[2])
for number in range(int(sys.argv[3])):
    emitter.broadcast("/ws", str(number))
print("sent", flush=True)
"""


class Milestones(Queueing):
    """A Queueing client that tells when it got its ``step``-th, 2 ``step``-th... message."""

    def __init__(self, step: int = 1000) -> None:
        super().__init__()
        self.step = step
        self.reached = [Event() for _ in range(10)]

    def send_outgoing(self, message: Outgoing) -> bool:
        super().send_outgoing(message)
        milestone, rest = divmod(len(self.messages), self.step)
        if not rest and milestone < len(self.reached):
            self.reached[milestone].set()
        return True


def test_a_subscription_killed_three_times_mid_stream_loses_nothing(
    redis_server: RedisServer, stop_brokers: list[RedisBroker]
) -> None:
    registry = Registry("/ws")
    clients = [Milestones() for _ in range(5)]
    for number, client in enumerate(clients):
        registry.add(f"n.{number}", client)  # type: ignore[arg-type]
    broker = subscribed(redis_server.url, stop_brokers, registry)
    reconnected = Event()
    broker.on("broker_reconnect")(lambda downtime: reconnected.set())
    killer = redis.Redis.from_url(redis_server.url)
    count = 5000
    try:
        with ServerProcess(
            "-c", EMITTING, redis_server.url, broker.namespace, str(count)
        ) as sender:
            for thousands in (1, 2, 3):  # while the stream flows
                assert clients[0].reached[thousands].wait(WAIT)
                assert killer.client_kill_filter(_type="pubsub") == 1
                assert reconnected.wait(WAIT)
                reconnected.clear()
            got = [[int(message) for message in take(client, count)] for client in clients]
            assert sender.wait(WAIT) == 0
    finally:
        killer.close()
    for numbers in got:
        assert numbers == list(range(count))  # every one, in order, once
    stats = broker.stats
    assert (stats.disconnects, stats.missed, stats.gaps) == (3, 0, 0)
    assert stats.received == count and 0 < stats.repaired < count
    assert all(client.queue.empty() for client in clients)


class Numbers(Recorder):
    """Records the numbers it gets (after the offset, when positioned); can wait for one."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[int] = []
        self._waiting: tuple[int, Event] | None = None

    def send_outgoing(self, message: Outgoing) -> bool:
        self.got.append(int(bytes(message.payload).decode().rpartition(":")[2]))
        if self._waiting is not None and self.got[-1] >= self._waiting[0]:
            self._waiting[1].set()
        return True

    def wait_for(self, number: int) -> bool:
        """Wait (bounded) until it got ``number`` or a later one."""
        if self.got and self.got[-1] >= number:
            return True
        self._waiting = (number, Event())
        return self._waiting[1].wait(WAIT)


def numbered(registry: Registry, count: int) -> list[Numbers]:
    clients = [Numbers() for _ in range(count)]
    for number, client in enumerate(clients):
        framer = framed if registry.recovery else None
        registry.add(f"{registry.key}.{number}", client, framer=framer)  # type: ignore[arg-type]
    return clients


@pytest.mark.parametrize("persistent", [False, True], ids=["no-persistence", "aof"])
def test_redis_killed_mid_stream_what_the_history_kept_is_repaired_the_rest_counted(
    persistent: bool, tmp_path: Path, stop_brokers: list[RedisBroker]
) -> None:
    server = RedisServer(str(tmp_path) if persistent else None)  # its own: killed below
    try:
        ns = namespace()
        own = Registry("/rec", Recovery())
        (sender_own,) = numbered(own, 1)  # the sender's client gets them from the log too
        sending = subscribed(server.url, stop_brokers, Registry("/plain"), own, namespace=ns)
        plain, positioned = Registry("/plain"), Registry("/rec", Recovery())
        clients = {"/plain": numbered(plain, 2), "/rec": [*numbered(positioned, 2), sender_own]}
        receiving = subscribed(server.url, stop_brokers, plain, positioned, namespace=ns)
        gaps: list[Gap] = []
        receiving.on("broker_gap")(gaps.append)
        own_gaps: list[Gap] = []
        sending.on("broker_gap")(own_gaps.append)
        sent = 0
        stop = Event()

        def send() -> None:
            nonlocal sent
            while not stop.is_set():
                sending.broadcast("/plain", str(sent))
                sending.broadcast("/rec", str(sent))
                sent += 1
                gevent.sleep(0.005)

        sender = gevent.spawn(send)
        assert clients["/plain"][0].wait_for(50)
        server.kill()
        gevent.sleep(0.5)  # an outage of half a second, messages flowing all along
        server.start()
        back_at, back = sent, gevent.get_hub().loop.now()
        assert clients["/plain"][0].wait_for(back_at + 1)
        resumed = gevent.get_hub().loop.now() - back
        assert clients["/plain"][0].wait_for(back_at + 50)
        stop.set()
        sender.join(WAIT)
        assert sending.flush(WAIT)
        for client in clients["/plain"] + clients["/rec"]:
            assert client.wait_for(sent - 1)
    finally:
        server.kill()
    assert resumed < 5.0
    lost_by_channel = {
        "/plain": receiving.channel_all,
        "/rec": receiving.channel_of_endpoint("/rec"),
    }
    for endpoint, endpoint_clients in clients.items():
        for client in endpoint_clients:
            reported = own_gaps if client is sender_own else gaps
            counted = sum(gap.count for gap in reported if gap.channel == lost_by_channel[endpoint])
            assert client.got == sorted(set(client.got))  # in order, none twice
            missing = len(set(range(sent)) - set(client.got))
            assert missing == counted, (endpoint, persistent, missing, reported)
            if persistent and endpoint == "/rec":
                assert counted == 0  # kept by Redis, or retried by the sender: all there
    publish_failed = sending.stats.publish_failed  # /plain's, dropped while Redis was down
    assert 0 < publish_failed
    if persistent:  # only what the sender dropped is missing (a batch cut by the kill may be in)
        assert sum(gap.count for gap in gaps) <= publish_failed
        assert receiving.stats.histories_lost == sending.stats.histories_lost == 0
    else:
        assert receiving.stats.histories_lost == 2  # the logs of /plain and /rec
    assert receiving.stats.missed == sum(gap.count for gap in gaps)


def test_sends_to_a_recovery_endpoint_go_through_its_log_from_any_process(
    redis_server: RedisServer, stop_brokers: list[RedisBroker]
) -> None:
    ns = namespace()
    here, (local,) = recovering("h.1")
    there, (remote,) = recovering("t.1")
    sending = subscribed(redis_server.url, stop_brokers, here, namespace=ns)
    subscribed(redis_server.url, stop_brokers, there, namespace=ns)
    there.join("t.1", "lobby")
    assert sending.send_to("/ws", "t.1", "to t.1")  # not here: its log finds it
    assert sending.broadcast("/ws", "lobby", room="lobby") == 0
    assert sending.send_to("/ws", "h.1", "to h.1")  # here, but positioned all the same
    assert take(remote, 2) == ["1:to t.1", "2:lobby"]
    assert take(local, 1) == ["3:to h.1"]
    emitter = Emitter(redis_server.url, namespace=ns)
    try:
        assert emitter.broadcast("/ws", "from cron") == 2  # found the endpoint's log
        assert emitter.send_to("t.1", "by id", endpoint="/ws") == 2
        assert take(remote, 2) == ["4:from cron", "5:by id"]
        assert take(local, 1) == ["4:from cron"]
        assert emitter.close("t.1", 4001, "bye", endpoint="/ws") == 2
        assert take(remote, 1) == ["closed 4001"]
    finally:
        emitter.disconnect()
    assert remote.closed == (4001, "bye") and "t.1" not in there
    entries = sending.replay("/ws", Position(sending.top("/ws").epoch, 0))
    assert [entry.envelope.kind for entry in entries or []] == [
        Kind.SEND_TO,
        Kind.ROOM,
        Kind.SEND_TO,
        Kind.BROADCAST,
        Kind.SEND_TO,
        Kind.CLOSE,
    ]


def test_a_recovery_endpoint_attached_while_listening_is_subscribed_before_it_serves(
    redis_server: RedisServer, stop_brokers: list[RedisBroker]
) -> None:
    broker = subscribed(redis_server.url, stop_brokers, Registry("/plain"))  # a worker's start
    registry, (client,) = recovering("n.1")
    broker.attach(registry)  # its first handshake
    assert not broker.wait_subscribed(0)  # not before the endpoint's channel is live too
    assert broker.listen()
    broker.broadcast("/ws", "positioned")
    assert take(client, 1) == ["1:positioned"]
    assert broker.stats.disconnects == 0


def test_a_recovery_endpoints_sends_wait_for_redis_in_a_bounded_queue(
    stop_brokers: list[RedisBroker],
) -> None:
    from tests.live_apps.redis_server import free_port

    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", namespace=namespace(), max_queue=5)
    stop_brokers.append(broker)
    registry, (client,) = recovering("n.1")
    broker.attach(registry)
    with LogWatcher("dropping new ones") as dropping, LogWatcher("cannot publish") as down:
        for number in range(8):
            broker.broadcast("/ws", str(number))
        assert dropping.seen.wait(WAIT) and down.seen.wait(WAIT)
    assert broker.stats.publish_failed == 3  # the three past the bound; five wait
    assert not broker.flush(0.2) and client.queue.empty()  # kept for when Redis is back
