"""Histories (geo_ws.delivery.history): the in-memory log, the MemoryBroker's recovery
endpoints, and the Redis logs with a real redis-server (offsets, trimming, epochs,
replay, duplicates, repair across workers and faults)."""

from __future__ import annotations

import pytest

from geo_ws.delivery.broker import MemoryBroker
from geo_ws.delivery.history import Entry, MemoryLog, Position, Recovery
from geo_ws.delivery.registry import Registry
from geo_ws.protocol.envelope import Envelope, Kind
from geo_ws.protocol.frames import Opcode
from geo_ws.protocol.outgoing import Outgoing
from tests.delivery.test_broker import Recorder


def envelope(text: str, kind: Kind = Kind.BROADCAST, target: str = "") -> Envelope:
    return Envelope(kind, Opcode.TEXT, "/ws", target, text.encode())


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
    offsets = [log.append(envelope(f"m{number}")) for number in range(1, 4)]
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
        log.append(envelope(f"m{number}"))
    entries = log.replay(Position(log.epoch, 2))
    assert entries is not None and [entry.offset for entry in entries] == [3, 4, 5]
    assert log.replay(Position(log.epoch, 1)) is None  # 2 is gone: size 3
    clock.now += 5
    log.append(envelope("m6"))
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
