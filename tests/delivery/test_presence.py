"""geo_ws.delivery.presence without Flask: the in-memory kind, and the Redis kind on a
real redis-server, two presences standing for two processes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import gevent
import pytest

from geo_ws.delivery.broker import MemoryBroker, RedisBroker
from geo_ws.delivery.presence import (
    MemoryPresence,
    PresenceEvent,
    RedisPresence,
    presence_for,
)
from tests.helpers import WAIT
from tests.live_apps.redis_server import RedisServer, namespace, redis_server

__all__ = ["redis_server"]  # the fixture, imported for pytest


def test_presence_for_gives_one_presence_per_broker_of_its_kind(redis_server: RedisServer) -> None:
    memory = MemoryBroker()
    assert isinstance(presence_for(memory), MemoryPresence)
    assert presence_for(memory) is presence_for(memory)
    assert presence_for(MemoryBroker()) is not presence_for(memory)
    redis = RedisBroker(redis_server.url)
    assert isinstance(presence_for(redis), RedisPresence)


def test_memory_presence_tells_each_change_once() -> None:
    presence = MemoryPresence()
    told: list[PresenceEvent] = []
    presence.attach("/ws", 5.0, told.append)
    presence.add("/ws", "n.a", {"name": "a"}, [None, "lobby"])
    presence.add("/ws", "n.a", {"name": "A"}, [None])
    presence.add("/other", "n.b", {}, [None])  # no hook there: nothing told
    assert presence.members("/ws") == {"n.a": {"name": "A"}}
    assert presence.members("/ws", "lobby") == {"n.a": {"name": "a"}}
    assert (presence.count("/ws"), presence.count("/ws", "nowhere")) == (1, 0)
    presence.discard("/ws", "n.a", [None, "lobby", "nowhere"])
    assert presence.members("/ws") == {} and presence.interval == 5.0
    assert [(e.kind, e.room, e.info) for e in told] == [
        ("join", None, {"name": "a"}),
        ("join", "lobby", {"name": "a"}),
        ("update", None, {"name": "A"}),
        ("leave", None, None),
        ("leave", "lobby", None),
    ]


@pytest.fixture
def two_processes(redis_server: RedisServer) -> Iterator[tuple[RedisPresence, RedisPresence]]:
    """Two Redis presences on one namespace, as two workers have, pinging every 0.4 s."""
    ns = namespace()
    presences = [RedisPresence(RedisBroker(redis_server.url, namespace=ns)) for _ in range(2)]
    yield presences[0], presences[1]
    for presence in presences:
        presence.stop()


def test_redis_presence_is_shared_and_a_crashed_process_entries_expire_once(
    two_processes: tuple[RedisPresence, RedisPresence],
) -> None:
    crashing, surviving = two_processes
    told: list[tuple[str, str, str | None]] = []
    for presence in two_processes:
        presence.attach("/ws", 0.4, lambda e: told.append((e.kind, e.connection_id, e.room)))
    crashing.add("/ws", "c.1", {"name": "one"}, [None, "lobby"])
    crashing.add("/ws", "c.2", {"name": "two"}, [None])
    surviving.add("/ws", "s.1", {"name": "three"}, [None])
    assert surviving.members("/ws") == {
        "c.1": {"name": "one"},
        "c.2": {"name": "two"},
        "s.1": {"name": "three"},
    }
    assert crashing.count("/ws", "lobby") == surviving.count("/ws", "lobby") == 1
    # Refreshed, entries outlive their time to live (0.6 s).
    gevent.sleep(3 * surviving.ttl)
    assert crashing.count("/ws") == 3
    crashing.stop()  # as if SIGKILLed: nobody removes its entries
    stopped = gevent.get_hub().loop.now()
    with gevent.Timeout(WAIT):
        while surviving.count("/ws") != 1:
            gevent.sleep(0.02)
    gone = gevent.get_hub().loop.now() - stopped
    assert gone <= crashing.ttl + 0.1
    assert surviving.members("/ws") == {"s.1": {"name": "three"}}
    # The lobby's expired entry is found, and told, by the first read of the lobby.
    assert surviving.members("/ws", "lobby") == {}
    assert Counter(told) == Counter(  # each told once, by one of the two
        [("join", "c.1", None), ("join", "c.1", "lobby"), ("join", "c.2", None)]
        + [("join", "s.1", None), ("leave", "c.1", None), ("leave", "c.2", None)]
        + [("leave", "c.1", "lobby")]
    )
    surviving.discard("/ws", "s.1", [None])
    assert surviving.count("/ws") == 0 and told[-1] == ("leave", "s.1", None)


def test_after_redis_restarts_empty_each_process_writes_its_entries_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from redis import RedisError

    redis = RedisServer()  # its own: this test kills it
    presence = RedisPresence(RedisBroker(redis.url, namespace=namespace()))
    try:
        told: list[tuple[str, str]] = []
        presence.attach("/ws", 0.4, lambda e: told.append((e.kind, e.connection_id)))
        presence.add("/ws", "p.1", {"n": 1}, [None])
        redis.kill()
        presence.add("/ws", "p.2", {"n": 2}, [None])  # logged, not raised: written later
        assert "presence: cannot add p.2" in caplog.text
        with pytest.raises(RedisError):
            presence.members("/ws")
        redis.start()  # without the data: nothing is persisted
        with gevent.Timeout(WAIT):
            while True:
                try:
                    if presence.count("/ws") == 2:
                        break
                except RedisError:
                    pass  # the first command after the restart may meet the old connection
                gevent.sleep(0.02)
        assert presence.members("/ws") == {"p.1": {"n": 1}, "p.2": {"n": 2}}
        # p.2 joined once, when it could be written; p.1's entry, lost with the data,
        # was told again (nobody can tell a restart from a late refresh).
        assert told.count(("join", "p.2")) == 1 and told.count(("join", "p.1")) == 2
        assert not [kind for kind, _ in told if kind != "join"]
    finally:
        presence.stop()
        presence.broker.stop()
        redis.kill()
