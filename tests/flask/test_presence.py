"""Presence through the Flask glue: ``ws.set_presence``, ``websocket.presence``,
``presence_count`` and ``on_presence``, on a real server in this process (one process,
the memory broker), then under gunicorn with three workers and a real redis-server.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest

from geo_ws.delivery.broker import Broker, MemoryBroker, RedisBroker
from geo_ws.delivery.presence import RedisPresence, presence_for
from tests.helpers import WAIT, RawClient
from tests.live_apps.presence import PING_INTERVAL, create_app
from tests.live_apps.redis_server import RedisServer, namespace, redis_server
from tests.server.test_gunicorn import gunicorn

__all__ = ["redis_server"]  # the fixture, imported for pytest

Serve = Callable[[Any], str]  # the serve fixture of conftest.py


def present(address: str, name: str) -> tuple[RawClient, str]:
    """A present client of the presence app, and its id."""
    raw = RawClient(address, f"/ws?name={name}")
    assert raw.status == 101
    return raw, json.loads(raw.recv(skip_pings=True))["id"]


def ask(raw: RawClient, **command: Any) -> Any:
    """Send a command; return the answer (keepalive pings skipped)."""
    raw.send_text(json.dumps(command))
    return json.loads(raw.recv(skip_pings=True))


def events(watcher: RawClient, count: int) -> list[tuple[str, str, str | None]]:
    """The next ``count`` events a ``/watch`` client got: (kind, id, room)."""
    got = [json.loads(watcher.recv(skip_pings=True)) for _ in range(count)]
    return [(event["event"], event["id"], event["room"]) for event in got]


@pytest.fixture(params=["memory", "redis"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """Each kind of broker, hence of presence: in memory, and in a real redis-server."""
    if request.param == "memory":
        yield MemoryBroker()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    redis_broker = RedisBroker(server.url, namespace=namespace())
    yield redis_broker
    presence = presence_for(redis_broker)
    assert isinstance(presence, RedisPresence)
    presence.stop()
    redis_broker.stop()


def test_presence_rooms_updates_and_leaves_in_one_process(serve: Serve, broker: Broker) -> None:
    address = serve(create_app(broker))
    watcher = RawClient(address, "/watch")
    assert json.loads(watcher.recv()) == {"pid": os.getpid()}
    alice, alice_id = present(address, "alice")
    bob, bob_id = present(address, "bob")
    assert events(watcher, 2) == [("join", alice_id, None), ("join", bob_id, None)]
    pid = ask(alice, presence=None)["presence"][alice_id]["pid"]
    assert ask(alice, presence=None) == {
        "presence": {alice_id: {"name": "alice", "pid": pid}, bob_id: {"name": "bob", "pid": pid}}
    }
    assert ask(bob, count=None) == {"count": 2}
    # A present client is present in the rooms it joins, and leaves them.
    assert ask(alice, join="lobby") == {"joined": "lobby"}
    assert events(watcher, 1) == [("join", alice_id, "lobby")]
    assert ask(bob, presence="lobby") == {"presence": {alice_id: {"name": "alice", "pid": pid}}}
    assert ask(bob, count="lobby") == {"count": 1}
    assert ask(alice, info={"name": "Alice"}) == {"info": {"name": "Alice"}}
    assert set(events(watcher, 2)) == {("update", alice_id, None), ("update", alice_id, "lobby")}
    assert ask(bob, presence="lobby") == {"presence": {alice_id: {"name": "Alice"}}}
    assert ask(alice, leave="lobby") == {"left": "lobby"}
    assert events(watcher, 1) == [("leave", alice_id, "lobby")]
    assert ask(bob, count="lobby") == {"count": 0}
    # Cleared, then back; a client that closes leaves everything it was present in.
    assert ask(bob, clear=True) == {"cleared": True}
    assert events(watcher, 1) == [("leave", bob_id, None)]
    assert ask(alice, presence=None)["presence"].keys() == {alice_id}
    assert ask(bob, join="lobby") == {"joined": "lobby"}  # not present: no event
    assert ask(bob, info={"name": "bob"}) == {"info": {"name": "bob"}}
    assert set(events(watcher, 2)) == {("join", bob_id, None), ("join", bob_id, "lobby")}
    bob.send_close(1000)
    assert bob.recv_close().code == 1000
    assert set(events(watcher, 2)) == {("leave", bob_id, None), ("leave", bob_id, "lobby")}
    assert ask(alice, presence=None)["presence"].keys() == {alice_id}
    assert ask(alice, count="lobby") == {"count": 0}


def on_every_worker(address: str, workers: int) -> list[tuple[RawClient, str, int]]:
    """Present clients (with their ids and workers' pids), connected in batches at once
    until every worker holds some."""
    clients: list[tuple[RawClient, str, int]] = []
    for batch in range(10):
        names = [f"c{batch}-{n}" for n in range(6)]
        greenlets = [gevent.spawn(RawClient, address, f"/ws?name={name}") for name in names]
        gevent.joinall(greenlets, timeout=WAIT, raise_error=True)
        for greenlet in greenlets:
            hello = json.loads(greenlet.value.recv(skip_pings=True))
            clients.append((greenlet.value, hello["id"], hello["pid"]))
        if len({pid for _, _, pid in clients}) == workers:
            return clients
    raise AssertionError("the connections did not reach every worker")


def test_presence_is_seen_from_every_worker_and_a_sigkilled_workers_clients_leave(
    redis_server: RedisServer,
) -> None:
    options = ("-e", f"GEO_WS_BROKER_URL={redis_server.url}")
    with gunicorn("tests.live_apps.presence:app", *options, workers=3) as (_, address):
        watcher = RawClient(address, "/watch")
        watched = json.loads(watcher.recv())["pid"]
        clients = on_every_worker(address, 3)
        expected = {
            connection_id: {"name": f"c{n // 6}-{n % 6}", "pid": pid}
            for n, (_, connection_id, pid) in enumerate(clients)
        }
        # The same presence, whichever worker is asked; each join told once.
        for pid in {pid for _, _, pid in clients}:
            client = next(client for client, _, owner in clients if owner == pid)
            assert ask(client, presence=None) == {"presence": expected}
            assert ask(client, count=None) == {"count": len(expected)}
        told = Counter(events(watcher, len(expected)))
        assert told == Counter(("join", connection_id, None) for connection_id in expected)
        # SIGKILL a worker other than the watcher's: nobody removes its clients' entries.
        victim = next(pid for _, _, pid in clients if pid != watched)
        gone = {connection_id for _, connection_id, pid in clients if pid == victim}
        asking = next(client for client, _, pid in clients if pid not in (victim, watched))
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        with gevent.Timeout(WAIT):
            while ask(asking, count=None)["count"] != len(expected) - len(gone):
                gevent.sleep(0.02)
        converged = time.monotonic() - killed
        left = Counter(events(watcher, len(gone)))
        assert left == Counter(("leave", connection_id, None) for connection_id in gone)
        remaining = {key: info for key, info in expected.items() if key not in gone}
        assert ask(asking, presence=None) == {"presence": remaining}
        print(
            f"\npresence: {len(gone)} of {len(expected)} clients on a SIGKILLed worker left "
            f"presence after {converged:.2f}s (ping interval {PING_INTERVAL}s)"
        )
        assert converged < 2 * PING_INTERVAL
