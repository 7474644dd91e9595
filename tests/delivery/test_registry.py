"""Connection ids and the per-endpoint registry (geo_ws.delivery.registry)."""

from __future__ import annotations

import os
import socket

from geo_ws.delivery.registry import Registry, new_id, node_id, node_of
from geo_ws.io.connection import Connection, Outgoing


def test_ids_are_unique_and_name_their_process() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert len({connection_id.split(".")[0] for connection_id in ids}) == 1


def test_a_forked_process_draws_its_own_node() -> None:
    parent = new_id().split(".")[0]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports its node and leaves at once
        os.write(write, new_id().split(".")[0].encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    assert child and child != parent


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


def test_node_of_reads_the_process_part_of_an_id() -> None:
    connection_id = new_id()
    assert node_of(connection_id) == node_id() == connection_id.split(".")[0]
    assert node_of("no-dot") == ""


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
