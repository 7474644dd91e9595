"""Brokers (geo_ws.delivery.broker) and the Emitter: gap detection, local-first delivery,
and Redis pub/sub across nodes with a real redis-server, faults included (envelopes:
tests/protocol/test_envelope.py)."""

from __future__ import annotations

import itertools
import json
import logging
import re
import signal
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from flask import Flask
from gevent.event import Event
from gevent.queue import Queue

from geo_ws import Emitter
from geo_ws.delivery.broker import (
    Gap,
    GapDetector,
    MemoryBroker,
    RedisBroker,
    _Follower,
    _RateLimitedLog,
    get_broker,
)
from geo_ws.delivery.history import Position
from geo_ws.delivery.ids import new_id, node_id
from geo_ws.delivery.registry import Registry
from geo_ws.flask.endpoint import WebSocket
from geo_ws.protocol.envelope import Envelope, Kind, tag
from geo_ws.protocol.frames import Opcode, encode_close
from geo_ws.protocol.outgoing import Outgoing
from tests.helpers import WAIT, RawClient
from tests.live_apps.cluster import create_app
from tests.live_apps.redis_server import RedisServer, free_port, namespace, redis_server

__all__ = ["redis_server"]  # the fixture, imported for pytest

Serve = Callable[[Any], str]  # the serve fixture of conftest.py


# -- gaps, local delivery (no I/O) ------------------------------------------------------


def test_the_gap_detector_reports_holes_and_drops_repeats() -> None:
    detector = GapDetector(capacity=2)
    assert detector.check("a", "all", 7) is True  # the first heard: nothing to compare
    assert detector.check("a", "all", 8) is True
    assert detector.check("a", "all", 12) == Gap("a", "all", 9, 11)
    assert Gap("a", "all", 9, 11).count == 3
    assert detector.check("a", "all", 12) is False  # a duplicate
    assert detector.check("a", "all", 10) is False  # too late: already reported
    assert detector.check("a", "node:n", 1) is True  # channels are followed apart
    assert detector.check("b", "all", 1) is True  # a third pair: "a"/"all" is forgotten
    assert detector.check("a", "all", 20) is True


class Recorder:
    """Stands in for a Connection: records what it is handed."""

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.closed: tuple[int, str] | None = None

    def send(self, data: str | bytes) -> bool:
        return self.send_outgoing(Outgoing(data))

    def send_outgoing(self, message: Outgoing) -> bool:
        payload = bytes(message.payload)
        self.messages.append(payload.decode() if message.opcode == Opcode.TEXT else payload)
        return True

    def request_close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)


def registry_of(key: str, *names: str) -> tuple[Registry, dict[str, Recorder]]:
    registry = Registry(key)
    recorders = {name: Recorder() for name in names}
    for name, recorder in recorders.items():
        registry.add(name, recorder)  # type: ignore[arg-type]
    return registry, recorders


def test_the_memory_broker_delivers_here_and_reaches_no_other_process() -> None:
    broker = MemoryBroker()
    registry, clients = registry_of("/ws", "n.1", "n.2")
    broker.attach(registry)
    registry.join("n.2", "lobby")
    assert broker.broadcast("/ws", "all") == 2
    assert broker.broadcast("/ws", b"lobby", room="lobby") == 1
    assert broker.broadcast("/elsewhere", "nobody") == 0
    assert broker.send_to("/ws", "n.1", "one")
    assert clients["n.1"].messages == ["all", "one"]
    assert clients["n.2"].messages == ["all", b"lobby"]
    # Ids of this process that are gone, and ids of other processes: nobody to take them.
    assert not broker.send_to("/ws", new_id(), "gone")
    assert not broker.send_to("/ws", "othernode.1", "far away")
    assert not broker.close("/ws", "othernode.1")
    assert broker.close("/ws", "n.1", 4000, "bye")
    assert clients["n.1"].closed == (4000, "bye") and "n.1" not in registry
    with pytest.raises(ValueError):
        broker.close("/ws", "n.2", 1006)


def test_received_envelopes_reach_local_connections_and_gaps_are_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = RedisBroker("redis://127.0.0.1:1/0")  # never connects: fed by hand below
    registry, clients = registry_of("/ws", "n.1", "n.2")
    broker.attach(registry)  # and no listen(): no listener
    registry.join("n.2", "lobby")
    gaps: list[Gap] = []
    broker.on("broker_gap")(gaps.append)
    broker._followers["geo_ws:all"] = _Follower(Position("e", 0))  # as if subscribed
    offsets = itertools.count(1)  # the log has no hole: far/1 lost some before Redis

    def feed(seq: int, kind: Kind, target: str, payload: bytes, opcode: int = Opcode.TEXT) -> None:
        envelope = Envelope(kind, opcode, "/ws", target, payload, "far/1", seq)
        broker._on_message("geo_ws:all", tag("e", next(offsets), envelope.encode()))

    feed(1, Kind.BROADCAST, "", b"one")
    feed(2, Kind.ROOM, "lobby", b"\x00\xff", Opcode.BINARY)
    feed(2, Kind.BROADCAST, "", b"two again")  # a duplicate: dropped
    with caplog.at_level(logging.WARNING, logger="geo_ws"):
        feed(5, Kind.SEND_TO, "n.1", b"five")
    feed(6, Kind.CLOSE, "n.2", encode_close(4001, "go"), Opcode.CLOSE)
    broker._on_message("geo_ws:all", b"junk")
    # Its own envelopes were delivered before they were published: dropped.
    own = broker._sequencer.envelope("geo_ws:all", Kind.BROADCAST, "/ws", "", 1, b"own")
    broker._on_message("geo_ws:all", tag("e", next(offsets), own))

    assert clients["n.1"].messages == ["one", "five"]
    assert clients["n.2"].messages == ["one", b"\x00\xff"]
    assert clients["n.2"].closed == (4001, "go") and "n.2" not in registry
    assert gaps == [Gap("far/1", "geo_ws:all", 3, 4)]
    stats = broker.stats
    assert (stats.received, stats.gaps, stats.missed) == (4, 1, 2)
    assert (stats.duplicates, stats.malformed) == (1, 1)
    assert "2 message(s) from far/1 on geo_ws:all never arrived (seq 3-4)" in caplog.text
    assert broker._followers["geo_ws:all"].offset == 6


def test_hooks_take_only_known_events_and_a_failing_hook_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = MemoryBroker()
    with pytest.raises(ValueError):
        broker.on("gap")

    @broker.on("broker_reconnect")
    def failing(downtime: float) -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="geo_ws"):
        broker._run_hooks("broker_reconnect", 1.0)
    assert "the broker_reconnect hook" in caplog.text and "boom" in caplog.text


def test_get_broker_builds_one_redis_broker_per_url() -> None:
    memory = MemoryBroker()
    assert get_broker(memory) is memory
    assert isinstance(get_broker(None), MemoryBroker)
    assert isinstance(get_broker("memory://"), MemoryBroker)
    url = f"redis://127.0.0.1:{free_port()}/3"
    broker = get_broker(url)
    assert isinstance(broker, RedisBroker) and broker.url == url
    assert get_broker(url) is broker
    with pytest.raises(ValueError, match="no broker"):
        get_broker("amqp://localhost")


# -- choosing the broker of an endpoint ---------------------------------------------------


@pytest.fixture
def stop_brokers() -> Iterator[list[RedisBroker]]:
    """Brokers to stop after the test (their greenlets would outlive it)."""
    brokers: list[RedisBroker] = []
    yield brokers
    for broker in brokers:
        broker.stop()


def test_the_endpoint_option_then_app_config_then_environment_choose_the_broker(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, stop_brokers: list[RedisBroker]
) -> None:
    monkeypatch.delenv("GEO_WS_BROKER_URL", raising=False)
    app = Flask(__name__)
    default = WebSocket(app, "/default")
    configured = WebSocket(app, "/configured")
    chosen = WebSocket(app, "/chosen", broker=MemoryBroker())
    assert isinstance(default.broker, MemoryBroker)  # nothing configured: one process
    # The app's config may come after the endpoints: it is read on first use.
    app.config["GEO_WS_BROKER_URL"] = redis_server.url
    broker = configured.broker
    assert isinstance(broker, RedisBroker) and broker.url == redis_server.url
    stop_brokers.append(broker)
    assert not broker.wait_subscribed(0)  # choosing it opened nothing: clients subscribe
    assert isinstance(chosen.broker, MemoryBroker)
    monkeypatch.setenv("GEO_WS_BROKER_URL", redis_server.url[:-1] + "1")
    other = Flask("other")
    from_env = WebSocket(other, "/ws").broker
    assert isinstance(from_env, RedisBroker) and from_env.url.endswith("/1")
    stop_brokers.append(from_env)


# -- across nodes, with a real redis-server -----------------------------------------------


def start_node(serve: Serve, url: str, ns: str, stop_brokers: list[RedisBroker]) -> str:
    """An app with a RedisBroker of its own, served in this process: one node."""
    broker = RedisBroker(url, namespace=ns)
    stop_brokers.append(broker)
    return serve(create_app(broker))


def client(address: str) -> tuple[RawClient, str]:
    """A client of the cluster app, and its id."""
    raw = RawClient(address, "/ws")
    assert raw.status == 101
    hello = json.loads(raw.recv())
    return raw, hello["id"]


def command(raw: RawClient, **fields: Any) -> None:
    raw.send_text(json.dumps(fields))


def test_broadcasts_and_rooms_reach_every_node_exactly_once(
    serve: Serve, redis_server: RedisServer, stop_brokers: list[RedisBroker]
) -> None:
    ns = namespace()
    first, second = (start_node(serve, redis_server.url, ns, stop_brokers) for _ in range(2))
    (a, _), (b, _), (b2, _) = client(first), client(second), client(second)
    command(a, all="hello")
    assert [a.recv(), b.recv(), b2.recv()] == ["hello"] * 3
    command(b, join="lobby")
    assert json.loads(b.recv()) == {"joined": "lobby"}
    command(a, room="lobby", text="lobby only")
    assert b.recv() == "lobby only"
    command(b, leave="lobby")
    assert json.loads(b.recv()) == {"left": "lobby"}
    command(a, room="lobby", text="nobody left")
    command(a, all="end")
    # Whatever was sent before "end" came first: no duplicate, no room message leaked.
    assert [a.recv(), b.recv(), b2.recv()] == ["end"] * 3


def test_the_emitter_sends_broadcasts_and_closes_from_outside(
    serve: Serve, redis_server: RedisServer, stop_brokers: list[RedisBroker]
) -> None:
    ns = namespace()
    first, second = (start_node(serve, redis_server.url, ns, stop_brokers) for _ in range(2))
    (a, a_id), (b, b_id) = client(first), client(second)
    command(b, join="lobby")
    assert json.loads(b.recv()) == {"joined": "lobby"}
    emitter = Emitter(redis_server.url, namespace=ns)
    try:
        assert emitter.broadcast("/ws", "from cron") == 2  # two nodes subscribed
        assert [a.recv(), b.recv()] == ["from cron"] * 2
        emitter.broadcast("/ws", b"\x00binary", room="lobby")
        assert b.recv() == b"\x00binary"
        emitter.send_to(b_id, "just b")
        assert b.recv() == "just b"
        emitter.broadcast("/other", "another endpoint")  # nobody there
        emitter.close(a_id, 4001, "closed from cron")
        close = a.recv_close()
        assert (close.code, close.reason) == (4001, "closed from cron")
        emitter.broadcast("/ws", "after")
        assert b.recv() == "after"
        with pytest.raises(ValueError):
            emitter.send_to("not-an-id", "x")
        with pytest.raises(ValueError):
            emitter.close(b_id, 1005)
    finally:
        emitter.disconnect()


class LogWatcher(logging.Handler):
    """Sets an event when a ``geo_ws`` record matches ``pattern``."""

    def __init__(self, pattern: str) -> None:
        super().__init__(logging.WARNING)
        self.pattern = re.compile(pattern)
        self.seen = Event()
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.records.append(message)
        if self.pattern.search(message):
            self.seen.set()

    def __enter__(self) -> LogWatcher:
        logging.getLogger("geo_ws").addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger("geo_ws").removeHandler(self)


def test_without_redis_handshakes_are_refused_and_lost_messages_are_counted(
    serve: Serve, stop_brokers: list[RedisBroker]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    broker = RedisBroker(url, namespace=namespace(), subscribe_timeout=0.3)
    stop_brokers.append(broker)
    address = serve(create_app(broker))
    with LogWatcher("not subscribed to Redis at .* refusing WebSockets") as log:
        refused = RawClient(address, "/ws")  # it would miss what other processes send
        assert refused.status == 503
        assert log.seen.wait(WAIT), log.records
    with LogWatcher("cannot publish to Redis") as log:
        assert broker.broadcast("/ws", "nobody here") == 0
        assert log.seen.wait(WAIT), log.records
    assert broker.stats.publish_failed >= 1 and broker.stats.published == 0


def test_redis_killed_mid_stream_the_gap_is_reported_and_delivery_resumes(
    serve: Serve, stop_brokers: list[RedisBroker]
) -> None:
    redis = RedisServer()  # its own: this test kills it
    try:
        ns = namespace()
        first, second = (start_node(serve, redis.url, ns, stop_brokers) for _ in range(2))
        receiving = stop_brokers[1]
        gaps: list[Gap] = []
        events: list[str] = []
        receiving.on("broker_gap")(gaps.append)
        receiving.on("broker_disconnect")(lambda error: events.append("disconnect"))
        receiving.on("broker_reconnect")(lambda downtime: events.append("reconnect"))
        (sender, _), (local, _), (remote, _) = client(first), client(first), client(second)
        sent = 0
        stop = Event()

        def send() -> None:
            nonlocal sent
            while not stop.is_set():
                command(sender, all=str(sent))
                sent += 1
                gevent.sleep(0.01)

        def received(raw: RawClient, until: Callable[[list[int]], bool]) -> list[int]:
            numbers: list[int] = []
            while not until(numbers):
                numbers.append(int(raw.recv()))
            return numbers

        sending = gevent.spawn(send)
        with LogWatcher("never arrived") as log:
            before = received(remote, lambda numbers: len(numbers) >= 20)
            redis.kill()
            stopped_at = sent
            gevent.sleep(0.5)  # an outage of half a second, messages flowing all along
            redis.start()
            back_at = sent
            back = gevent.get_hub().loop.now()
            after = received(remote, lambda numbers: bool(numbers) and numbers[-1] > back_at)
            resumed = gevent.get_hub().loop.now() - back
            stop.set()
            sending.join(WAIT)
            last = sent - 1
            rest = received(remote, lambda numbers: last in numbers or after[-1] == last)
            assert log.seen.wait(WAIT), log.records
        remote_got = before + after + rest
        local_got = received(sender, lambda numbers: len(numbers) == sent)
        assert local_got == list(range(sent))  # the sender's own node never missed one
        assert received(local, lambda numbers: len(numbers) == sent) == list(range(sent))
        # The other node: in order, no duplicate, and every hole reported.
        assert remote_got == sorted(set(remote_got))
        missing = set(range(remote_got[0], sent)) - set(remote_got)
        # Lost: what was sent around the outage (the last ones before it may be too).
        assert missing and before[-1] < min(missing), (stopped_at, back_at, missing)
        assert sum(gap.count for gap in gaps) == len(missing) == receiving.stats.missed
        assert resumed < 5.0
        assert events[:2] == ["disconnect", "reconnect"]
        assert stop_brokers[0].stats.publish_failed >= 1
    finally:
        redis.kill()


def test_garbage_on_the_channels_is_dropped_and_delivery_goes_on(
    serve: Serve, redis_server: RedisServer, stop_brokers: list[RedisBroker]
) -> None:
    import redis

    ns = namespace()
    first, second = (start_node(serve, redis_server.url, ns, stop_brokers) for _ in range(2))
    (a, _), (b, b_id) = client(first), client(second)

    def envelope(kind: Kind, opcode: int, target: str, payload: bytes) -> bytes:
        return Envelope(kind, opcode, "/ws", target, payload, "garbage/1", 1).encode()

    good = envelope(Kind.BROADCAST, Opcode.TEXT, "", b"fine")
    garbage = [
        b"",
        good[:10],  # truncated in the header
        good[:-5] + b"\xff\xff",  # the target's length runs past the end
        b"\x02" + good[1:],  # another version
        good[:1] + b"\x09" + good[2:],  # an unknown kind
        envelope(Kind.BROADCAST, Opcode.TEXT, "", b"caf\xc3"),  # a text payload, cut UTF-8
        envelope(Kind.SEND_TO, Opcode.TEXT, b_id, b"\xff\xfe"),
        envelope(Kind.BROADCAST, Opcode.PING, "", b"ping"),  # not a message's opcode
        envelope(Kind.CLOSE, Opcode.CLOSE, b_id, b"\x03\xed"),  # close code 1005
        envelope(Kind.CLOSE, Opcode.CLOSE, b_id, b"\x0f"),  # a 1-byte close payload
        bytes(range(256)),  # random-looking bytes
    ]
    publisher = redis.Redis.from_url(redis_server.url)
    emitter = Emitter(redis_server.url, namespace=ns)
    try:
        with LogWatcher("dropped a malformed message") as log:
            for channel in (f"{ns}:all", f"{ns}:node:{node_id()}"):
                for data in garbage:
                    assert publisher.publish(channel, data) == 2  # both nodes listen
            # Still delivered across nodes, both ways, and nothing was closed.
            command(a, all="from a")
            assert [a.recv(), b.recv()] == ["from a"] * 2
            command(b, all="from b")
            assert [a.recv(), b.recv()] == ["from b"] * 2
            # The node channel too (the nodes share this process's: one of them holds b).
            emitter.send_to(b_id, "to b")
            assert b.recv() == "to b"
            assert log.seen.wait(WAIT), log.records
    finally:
        publisher.close()
        emitter.disconnect()
    # Rate-limited: one record per node, however many arrive at once.
    assert len(log.records) == 2, log.records
    for broker in stop_brokers:
        assert broker.stats.malformed == 2 * len(garbage)
        assert broker.stats.received >= 1


class Queueing(Recorder):
    """A Recorder whose messages can be waited for."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: Queue[str | bytes] = Queue()

    def send_outgoing(self, message: Outgoing) -> bool:
        super().send_outgoing(message)
        self.queue.put(self.messages[-1])
        return True

    def request_close(self, code: int, reason: str = "") -> None:
        super().request_close(code, reason)
        self.queue.put(f"closed {code}")


class Failing(Recorder):
    """A Recorder with a bug."""

    def send_outgoing(self, message: Outgoing) -> bool:
        raise RuntimeError("a bug in a connection")


def listening_broker(url: str, stop_brokers: list[RedisBroker]) -> tuple[RedisBroker, Queueing]:
    """A subscribed RedisBroker with a Failing connection on ``/boom`` and a Queueing one
    on ``/ws``."""
    broker = RedisBroker(url, namespace=namespace())
    stop_brokers.append(broker)
    failing, _ = registry_of("/boom")
    failing.add("n.1", Failing())  # type: ignore[arg-type]
    broker.attach(failing)
    working, _ = registry_of("/ws")
    queueing = Queueing()
    working.add("n.2", queueing)  # type: ignore[arg-type]
    broker.attach(working)
    broker.listen()
    assert broker.wait_subscribed(WAIT)
    return broker, queueing


def test_an_error_handling_one_message_is_logged_and_the_next_ones_arrive(
    redis_server: RedisServer, stop_brokers: list[RedisBroker], caplog: pytest.LogCaptureFixture
) -> None:
    broker, queueing = listening_broker(redis_server.url, stop_brokers)
    emitter = Emitter(redis_server.url, namespace=broker.namespace)
    try:
        with caplog.at_level(logging.WARNING, logger="geo_ws"):
            for n in range(3):
                emitter.broadcast("/boom", f"lost {n}")
                emitter.broadcast("/ws", f"kept {n}")
            assert [queueing.queue.get(timeout=WAIT) for _ in range(3)] == [
                "kept 0",
                "kept 1",
                "kept 2",
            ]
    finally:
        emitter.disconnect()
    failures = [record for record in caplog.records if "handling it failed" in record.message]
    assert len(failures) == 1  # rate-limited
    assert failures[0].exc_info is not None and "a bug in a connection" in caplog.text
    assert broker.stats.received == 6 and broker.stats.disconnects == 0


def test_a_bug_in_the_listener_is_logged_and_it_subscribes_again(
    redis_server: RedisServer, stop_brokers: list[RedisBroker], caplog: pytest.LogCaptureFixture
) -> None:
    broker, queueing = listening_broker(redis_server.url, stop_brokers)
    handle = broker._handle

    def broken(channel: bytes, data: bytes) -> None:
        broker._handle = handle  # type: ignore[method-assign]
        raise RuntimeError("a bug in the listener")

    broker._handle = broken  # type: ignore[method-assign]
    reconnected = Event()
    broker.on("broker_reconnect")(lambda downtime: reconnected.set())
    emitter = Emitter(redis_server.url, namespace=broker.namespace)
    try:
        with caplog.at_level(logging.WARNING, logger="geo_ws"):
            emitter.broadcast("/ws", "lost")
            assert reconnected.wait(WAIT)
            emitter.broadcast("/ws", "after")
            # The message it failed on is read from the history when it is back.
            assert [queueing.queue.get(timeout=WAIT) for _ in range(2)] == ["lost", "after"]
    finally:
        emitter.disconnect()
    assert "the Redis listener failed" in caplog.text and "a bug in the listener" in caplog.text
    assert broker.stats.disconnects == 1


def test_a_rate_limited_log_says_how_many_records_it_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = _RateLimitedLog(logging.WARNING, interval=0.2)
    with caplog.at_level(logging.WARNING, logger="geo_ws"):
        for n in range(4):
            log.log("record %d", n)
        gevent.sleep(0.25)
        log.log("record %d", 4)
    assert [record.getMessage() for record in caplog.records] == [
        "record 0",
        "record 4 (and 3 more like it left out of the log)",
    ]


# -- fresh workers under gunicorn ----------------------------------------------------------


def subscribed_first(lines: list[str]) -> None:
    """Each worker subscribed to Redis before it accepted anything."""
    serving = [line for line in lines if "geo_ws serving on" in line]
    assert serving, lines
    for started in serving:
        pid = re.search(r"worker pid (\d+)", started).group(1)  # type: ignore[union-attr]
        own = [line for line in lines if f"[{pid}]" in line]
        subscribed = [n for n, line in enumerate(own) if "broker: subscribed to" in line]
        assert subscribed and subscribed[0] < own.index(started), own


@pytest.mark.timeout(180)  # 20 starts of 3 workers: 2-4 s each
def test_fresh_gunicorn_workers_miss_no_broadcast(redis_server: RedisServer) -> None:
    from tests.server.test_gunicorn import gunicorn

    broker = ["-e", f"GEO_WS_BROKER_URL={redis_server.url}"]
    spread: list[int] = []
    for start in range(20):
        cluster = gunicorn("tests.live_apps.cluster:app", *broker, workers=3, stop=signal.SIGQUIT)
        with cluster as (server, address):
            subscribed_first(server.stderr.lines)
            # Nine clients at once on three fresh workers.
            connecting = [gevent.spawn(RawClient, address, "/ws") for _ in range(9)]
            gevent.joinall(connecting, timeout=WAIT, raise_error=True)
            clients = [greenlet.get(block=False) for greenlet in connecting]
            assert [raw.status for raw in clients] == [101] * 9
            spread.append(len({json.loads(raw.recv())["pid"] for raw in clients}))
            for number, raw in enumerate(clients):
                command(raw, all=f"{start}.{number}")
            expected = {f"{start}.{number}" for number in range(9)}
            for raw in clients:
                got = [raw.recv() for _ in range(9)]
                assert set(got) == expected, (start, sorted(expected - set(got)))
    assert max(spread) >= 2, spread  # across workers, not within one
