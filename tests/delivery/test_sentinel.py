"""Redis Sentinel: the URL form, and a failover mid-stream with a real master, a replica
and three sentinels (tests/live_apps/sentinel.py), between two server processes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import gevent
import pytest
from gevent.event import Event
from redis.sentinel import Sentinel

from geo_ws import Emitter
from geo_ws.client import connect
from geo_ws.delivery.redis_url import SentinelURL, make_client, parse_sentinel_url
from tests.helpers import WAIT, RawClient
from tests.live_apps.process import ServerProcess
from tests.live_apps.sentinel import SERVICE, SentinelCluster, sentinel_cluster

__all__ = ["sentinel_cluster"]  # the fixture, imported for pytest


def test_sentinel_urls_name_the_sentinels_the_service_and_the_database() -> None:
    assert parse_sentinel_url("redis+sentinel://a:26379,b:26380/mymaster") == SentinelURL(
        [("a", 26379), ("b", 26380)], "mymaster"
    )
    assert parse_sentinel_url("redis+sentinel://s%40cret@[::1]:1/svc/3") == SentinelURL(
        [("::1", 1)], "svc", 3, None, "s@cret"
    )
    assert parse_sentinel_url("redis+sentinel://me:pw@h:1/svc/") == SentinelURL(
        [("h", 1)], "svc", 0, "me", "pw"
    )
    for bad in (
        "redis://h:1/svc",
        "redis+sentinel://h:1",
        "redis+sentinel://h:1/",
        "redis+sentinel://h/svc",
        "redis+sentinel://h:port/svc",
        "redis+sentinel://h:1/svc/zero",
    ):
        with pytest.raises(ValueError):
            parse_sentinel_url(bad)


def test_clients_from_a_sentinel_url_or_object_reach_the_master(
    sentinel_cluster: SentinelCluster,
) -> None:
    by_url = make_client(sentinel_cluster.url)
    by_object = make_client(Sentinel(sentinel_cluster.addresses), SERVICE)
    plain = make_client(f"redis://127.0.0.1:{sentinel_cluster.master.port}/0")
    try:
        by_url.set("key", "value")
        assert by_object.get("key") == plain.get("key") == b"value"
        assert by_url.info("replication")["role"] == "master"
    finally:
        for client in (by_url, by_object, plain):
            client.close()
    with pytest.raises(ValueError):
        make_client(Sentinel(sentinel_cluster.addresses))
    with pytest.raises(ValueError):
        make_client("http://127.0.0.1/")


@pytest.fixture
def two_servers(
    sentinel_cluster: SentinelCluster, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ServerProcess, str, ServerProcess, str]]:
    """Two server processes of tests/live_apps/cluster.py, brokered through the sentinels."""
    monkeypatch.setenv("GEO_WS_BROKER_URL", sentinel_cluster.url)
    servers = []
    try:
        for _ in range(2):
            servers.append(
                ServerProcess("-m", "geo_ws", "run", "tests.live_apps.cluster:app", "--port", "0")
            )
        (_, first), (_, second) = (server.wait_serving() for server in servers)
        yield servers[0], f"127.0.0.1:{first}", servers[1], f"127.0.0.1:{second}"
    finally:
        for server in servers:
            server.stop()


def test_a_failover_mid_stream_delivery_resumes_within_ten_seconds(
    sentinel_cluster: SentinelCluster, two_servers: tuple[ServerProcess, str, ServerProcess, str]
) -> None:
    _, first, receiving, second = two_servers
    sender, remote = RawClient(first, "/ws"), RawClient(second, "/ws")
    for client in (sender, remote):
        assert client.status == 101
        json.loads(client.recv())  # the greeting
    # Both servers subscribed: a broadcast from the first reaches the second.
    sender.send_text(json.dumps({"all": "ready"}))
    assert remote.recv(timeout=WAIT) == "ready"
    sent: list[float] = []  # when each number was sent
    stopping = Event()

    def send() -> None:
        while not stopping.is_set():
            sender.send_text(json.dumps({"all": str(len(sent))}))
            sent.append(time.monotonic())
            gevent.sleep(0.02)

    def drain_own() -> None:
        while True:
            sender.recv(timeout=60)  # its own node's copies: read, so its socket never fills

    greenlets = [gevent.spawn(send), gevent.spawn(drain_own)]
    try:
        got: list[int] = []
        while len(got) < 50:
            got.append(int(remote.recv()))
        sentinel_cluster.kill_master()
        killed, killed_at = len(sent), time.monotonic()
        new_master = sentinel_cluster.wait_failover(timeout=20)
        failover = time.monotonic() - killed_at
        # Delivery resumes: a number sent after the kill arrives.
        while not got or got[-1] < killed:
            got.append(int(remote.recv(timeout=15)))
        resumed = time.monotonic() - killed_at
        resumed_with = got[-1]
        while len(got) < 50 or got[-1] < resumed_with + 50:
            got.append(int(remote.recv()))
    finally:
        stopping.set()
        gevent.killall(greenlets, timeout=WAIT)
    # The sending server's subscription comes back too, after its own backoff (up to 5 s).
    commands = make_client(sentinel_cluster.url)
    try:
        with gevent.Timeout(2 * WAIT):
            while commands.pubsub_numsub("geo_ws:all")[0][1] < 2:
                gevent.sleep(0.05)
    finally:
        commands.close()
    emitter = Emitter(Sentinel(sentinel_cluster.addresses), service_name=SERVICE)
    try:
        assert emitter.broadcast("/ws", "from cron") == 2  # both servers, on the new master
    finally:
        emitter.disconnect()
    while (message := remote.recv()) != "from cron":
        got.append(int(message))
    missing = sorted(set(range(got[0], got[-1] + 1)) - set(got))
    print(
        f"\nfailover: master SIGKILLed, sentinels switched to port {new_master} after "
        f"{failover:.2f}s, delivery resumed after {resumed:.2f}s; {len(got)} delivered, "
        f"{len(missing)} lost around the failover (sent {len(sent)})"
    )
    assert resumed < 10.0
    assert got == sorted(set(got))  # in order, no duplicate
    # Lost: only what was sent around the failover; everything after resumption came.
    assert missing and min(missing) >= got[49] and max(missing) < resumed_with
    # The receiving server reported the hole in the numbering.
    assert any("never arrived" in line for line in receiving.stderr.lines), receiving.stderr.lines


def test_a_failover_under_a_recovery_endpoint_loses_and_repeats_nothing(
    sentinel_cluster: SentinelCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A recovery endpoint's publishes wait for Redis (in order) instead of being dropped,
    # and the replica promoted holds the log: the receiving server repairs from it.
    monkeypatch.setenv("GEO_WS_BROKER_URL", sentinel_cluster.url)
    servers = [
        ServerProcess("-m", "geo_ws", "run", "tests.live_apps.resumable:app", "--port", "0")
        for _ in range(2)
    ]
    try:
        (_, first), (_, second) = (server.wait_serving() for server in servers)
        sender = RawClient(f"127.0.0.1:{first}", "/ws")  # a plain client: plain frames
        receiver = connect(f"ws://127.0.0.1:{second}/ws", resume=True)
        sent = 0
        stopping = Event()

        def send() -> None:
            nonlocal sent
            while not stopping.is_set():
                sender.send_text(json.dumps({"all": str(sent)}))
                sent += 1
                gevent.sleep(0.02)

        def drain_own() -> None:
            while True:
                sender.recv(timeout=60)  # its own copies: read, so its socket never fills

        greenlets = [gevent.spawn(send), gevent.spawn(drain_own)]
        got: list[int] = []
        try:
            while len(got) < 50:
                got.append(int(receiver.recv(timeout=WAIT)))
            sentinel_cluster.kill_master()
            killed, killed_at = sent, time.monotonic()
            sentinel_cluster.wait_failover(timeout=20)
            while got[-1] < killed:
                got.append(int(receiver.recv(timeout=15)))
            resumed = time.monotonic() - killed_at
            while got[-1] < killed + 50:
                got.append(int(receiver.recv(timeout=WAIT)))
        finally:
            stopping.set()
            gevent.killall(greenlets, timeout=WAIT)
        while len(got) < sent:
            got.append(int(receiver.recv(timeout=2 * WAIT)))
        print(f"\nfailover under recovery: delivery resumed after {resumed:.2f}s; {sent} sent")
        assert got == list(range(sent))  # every one, once, in order
        assert resumed < 10.0
        assert receiver.reconnects == 0  # only Redis failed: no client was dropped
        receiver.close()
    finally:
        for server in servers:
            server.stop()
