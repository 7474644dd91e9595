"""Resume sessions (geo_ws.delivery.sessions): in memory and in a real Redis, taken over
by one owner at a time, kept ``age`` seconds after their connection drops."""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import pytest
from gevent.event import Event

from geo_ws.delivery.broker import MemoryBroker, RedisBroker
from geo_ws.delivery.sessions import (
    MemorySessions,
    RedisSessions,
    Session,
    Sessions,
    new_session_id,
    sessions_for,
)
from tests.helpers import WAIT
from tests.live_apps.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, imported for pytest

AGE = 0.3


@pytest.fixture
def broker(redis_server: RedisServer) -> Iterator[RedisBroker]:
    broker = RedisBroker(redis_server.url)
    yield broker
    broker.stop()


@pytest.fixture(params=["memory", "redis"])
def sessions(request: pytest.FixtureRequest) -> Sessions:
    if request.param == "memory":
        return sessions_for(MemoryBroker(), "/ws", AGE)
    return sessions_for(request.getfixturevalue("broker"), "/ws", AGE)


def test_the_store_goes_with_the_broker(broker: RedisBroker) -> None:
    assert isinstance(sessions_for(MemoryBroker(), "/ws", 1), MemorySessions)
    assert isinstance(sessions_for(broker, "/ws", 1), RedisSessions)
    assert len(new_session_id()) == 43
    assert new_session_id() != new_session_id()


def test_a_session_is_claimed_with_its_id_and_rooms(sessions: Sessions) -> None:
    sid = new_session_id()
    assert sessions.claim(sid, "b") is None  # never made
    assert sessions.save(sid, Session("n.1", frozenset({"red", "blue"}), "a"))
    found = sessions.claim(sid, "b")
    assert found == Session("n.1", frozenset({"red", "blue"}), "a")  # as it was
    # Now b owns it: a's writes are refused, b's taken.
    assert not sessions.save(sid, Session("n.1", frozenset(), "a"))
    assert sessions.save(sid, Session("n.1", frozenset({"red"}), "b"))
    assert sessions.claim(sid, "c") == Session("n.1", frozenset({"red"}), "b")


def test_another_endpoints_session_is_not_found(broker: RedisBroker) -> None:
    sid = new_session_id()
    assert sessions_for(broker, "/a", AGE).save(sid, Session("n.1", frozenset(), "a"))
    assert sessions_for(broker, "/b", AGE).claim(sid, "b") is None


def test_a_dropped_session_lives_age_seconds(sessions: Sessions) -> None:
    sid = new_session_id()
    session = Session("n.1", frozenset(), "a")
    sessions.save(sid, session)
    sessions.track(sid, session, lambda: None)
    sessions.untrack(sid, "a")
    sessions.save(sid, session)  # what a connection does when it drops
    gevent.sleep(AGE / 3)
    assert sessions.claim(sid, "b") is not None
    gevent.sleep(AGE * 1.5)
    assert sessions.claim(sid, "c") is None


def test_a_live_session_is_kept_past_its_age(sessions: Sessions) -> None:
    sid = new_session_id()
    session = Session("n.1", frozenset(), "a")
    sessions.save(sid, session)
    sessions.track(sid, session, lambda: None)
    gevent.sleep(AGE * 2)  # refreshed meanwhile (every AGE / 3 with Redis)
    assert sessions.claim(sid, "a") is not None


def test_the_owner_is_told_when_its_session_is_taken_over_here(sessions: Sessions) -> None:
    sid = new_session_id()
    session = Session("n.1", frozenset(), "a")
    lost = Event()
    sessions.save(sid, session)
    sessions.track(sid, session, lost.set)
    sessions.claim(sid, "a")  # its own claim: nothing to tell
    gevent.sleep(0)
    assert not lost.is_set()
    sessions.claim(sid, "b")
    assert lost.wait(WAIT)


def test_an_owner_elsewhere_learns_it_at_the_next_refresh(broker: RedisBroker) -> None:
    here, there = RedisSessions(broker, "/ws", 60), RedisSessions(broker, "/ws", 60)
    sid = new_session_id()
    session = Session("n.1", frozenset(), "a")
    lost = Event()
    here.save(sid, session)
    here.track(sid, session, lost.set)
    here.refresh()
    assert not lost.is_set()
    there.claim(sid, "b")  # another process: "here" does not know yet
    here.refresh()
    assert lost.wait(WAIT)


def test_a_refresh_writes_again_a_session_redis_lost(broker: RedisBroker) -> None:
    sessions = RedisSessions(broker, "/ws", 60)
    sid = new_session_id()
    session = Session("n.1", frozenset({"red"}), "a")
    sessions.save(sid, session)
    sessions.track(sid, session, lambda: None)
    broker.redis().flushall()
    sessions.refresh()
    assert sessions.claim(sid, "b") == session
