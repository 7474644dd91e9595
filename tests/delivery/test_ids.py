"""Connection ids (geo_ws.delivery.ids): unique, unguessable, and naming their process."""

from __future__ import annotations

import base64
import os

from geo_ws.delivery.ids import new_id, node_id, node_of


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


def test_node_of_reads_the_process_part_of_an_id() -> None:
    connection_id = new_id()
    assert node_of(connection_id) == node_id() == connection_id.split(".")[0]
    assert node_of("no-dot") == ""


def test_the_connection_part_is_128_random_bits() -> None:
    tokens = [new_id().partition(".")[2] for _ in range(1000)]
    raw = [base64.urlsafe_b64decode(token + "==") for token in tokens]
    assert all(len(token) == 22 for token in tokens) and all(len(bits) == 16 for bits in raw)
    # Each of the 128 bits is set in about half of the ids (a counter, or a clock, would
    # leave most of them constant). For random bits, 350-650 of 1000 is 9.5 sigmas wide.
    numbers = [int.from_bytes(bits, "big") for bits in raw]
    for bit in range(128):
        assert 350 <= sum(number >> bit & 1 for number in numbers) <= 650, bit
