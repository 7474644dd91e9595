"""The per-endpoint registry (geo_ws.delivery.registry)."""

from __future__ import annotations

import socket

from geo_ws.delivery.registry import Registry
from geo_ws.io.connection import Connection
from geo_ws.protocol.outgoing import Outgoing


class Recorder:
    """Stands in for a Connection where only what it is handed matters."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_outgoing(self, message: Outgoing) -> bool:
        self.frames.append(message.frame)
        return True


def test_broadcast_encodes_once_and_reaches_everyone() -> None:
    registry = Registry()
    recorders = [Recorder() for _ in range(3)]
    for number, recorder in enumerate(recorders):
        registry.add(f"n.{number}", recorder)  # type: ignore[arg-type]
    assert registry.broadcast("hi") == 3
    frames = [recorder.frames[0] for recorder in recorders]
    assert frames[0] == Outgoing("hi").frame
    assert all(frame is frames[0] for frame in frames)  # one object shared by all


def test_send_to_and_remove() -> None:
    registry = Registry()
    server, client = socket.socketpair()
    connection = Connection(server)
    registry.add("n.1", connection)
    assert "n.1" in registry and len(registry) == 1 and list(registry) == ["n.1"]
    assert registry.send_to("n.1", b"data")
    assert client.recv(100) == Outgoing(b"data").frame
    assert registry.remove("n.1") and not registry.remove("n.1")
    assert not registry.send_to("n.1", "gone")  # a missing id is a no-op
    assert registry.get("n.1") is None
    connection.abort()
    client.close()


def test_rooms_group_connections_and_forget_them_when_they_leave() -> None:
    registry = Registry("/ws")
    recorders = {name: Recorder() for name in ("n.1", "n.2", "n.3")}
    for name, recorder in recorders.items():
        registry.add(name, recorder)  # type: ignore[arg-type]
    assert registry.join("n.1", "red") and registry.join("n.2", "red")
    assert registry.join("n.1", "red")  # joining twice changes nothing
    assert registry.join("n.1", "blue")
    assert not registry.join("n.9", "red")  # not registered: not joined
    assert registry.rooms_of("n.1") == {"red", "blue"} and registry.rooms_of("n.3") == set()
    assert sorted(registry.members("red")) == ["n.1", "n.2"]
    assert registry.broadcast("to red", room="red") == 2
    assert registry.broadcast("to nobody", room="green") == 0
    assert registry.leave("n.2", "red") and not registry.leave("n.2", "red")
    assert registry.members("red") == ["n.1"]
    # Leaving the registry leaves every room; empty rooms disappear.
    assert registry.remove("n.1")
    assert registry.members("red") == [] and registry.members("blue") == []
    assert registry._rooms == {} and registry._memberships == {}
    assert [len(recorder.frames) for recorder in recorders.values()] == [1, 1, 0]


def framed(message: Outgoing, offset: int) -> Outgoing:
    """A framer: the offset before a text payload."""
    return Outgoing(f"{offset}:{bytes(message.payload).decode()}")


def texts(recorder: Recorder) -> list[str]:
    return [frame[2:].decode() for frame in recorder.frames]  # short unmasked text frames


def test_positioned_deliveries_are_framed_once_per_framer() -> None:
    registry = Registry("/ws")
    plain, first, second = Recorder(), Recorder(), Recorder()
    registry.add("n.1", plain)  # type: ignore[arg-type]
    registry.add("n.2", first, framer=framed)  # type: ignore[arg-type]
    registry.add("n.3", second, framer=framed)  # type: ignore[arg-type]
    assert registry.deliver(Outgoing("hi"), offset=7) == 3
    assert registry.deliver_to("n.3", Outgoing("you"), 8)
    assert not registry.deliver_to("n.4", Outgoing("nobody"), 9)
    assert registry.deliver(Outgoing("unpositioned")) == 3
    assert texts(plain) == ["hi", "unpositioned"]
    assert texts(first) == ["7:hi", "unpositioned"]
    assert texts(second) == ["7:hi", "8:you", "unpositioned"]
    assert first.frames[0] is second.frames[0]  # framed once, shared


def test_a_held_connection_gets_what_came_after_the_replay_when_released() -> None:
    registry = Registry("/ws")
    resuming, other = Recorder(), Recorder()
    registry.add("n.1", resuming, framer=framed)  # type: ignore[arg-type]
    registry.add("n.2", other)  # type: ignore[arg-type]
    registry.join("n.1", "room")
    registry.hold("n.1")
    for offset in (4, 5, 6):
        assert registry.deliver(Outgoing(f"m{offset}"), "room", offset=offset) == 1
    assert registry.deliver(Outgoing("all"), offset=7) == 2
    assert registry.deliver_to("n.1", Outgoing("own"), 8)
    assert resuming.frames == [] and texts(other) == ["all"]
    assert registry.release("n.1", after=5) == 3  # the replay covered 4 and 5
    assert texts(resuming) == ["6:m6", "7:all", "8:own"]
    assert registry.deliver(Outgoing("live"), offset=9) == 2
    assert texts(resuming)[-1] == "9:live"
    assert registry.release("n.1", after=0) == 0  # not held any more


def test_removing_a_held_connection_forgets_its_buffer() -> None:
    registry = Registry("/ws")
    registry.add("n.1", Recorder(), framer=framed)  # type: ignore[arg-type]
    registry.hold("n.1")
    registry.deliver(Outgoing("x"), offset=1)
    assert registry.remove("n.1")
    assert registry.release("n.1", after=0) == 0
