"""Taking the socket over from each kind of WSGI server (geo_ws.server.wsgi), over real socket
pairs; the servers themselves are tested in test_builtin.py and test_gunicorn.py."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from geo_ws.io.connection import Connection
from geo_ws.server.wsgi import FOREIGN_CONNECTIONS, TAKE_SOCKET, OpenConnections, take_over


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


def test_open_connections_count_detached_ones_until_they_end(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ended: list[int] = []
    connections = OpenConnections(lambda: ended.append(len(connections.detached)))
    parked, busy = Connection(pair[0]), Connection(pair[1])
    assert connections.none_left.is_set()
    connections.add(parked)
    connections.add(busy)
    connections.detach(parked)
    assert not connections.none_left.is_set()
    connections.discard(busy)  # never detached: the server's pool knew it
    assert ended == [] and not connections.none_left.is_set()
    connections.discard(parked)
    assert ended == [0]  # called once it no longer counts
    assert connections.none_left.is_set() and not connections.detached
    connections.discard(parked)  # twice is harmless
    assert ended == [0]


def test_geo_ws_servers_offer_wins_and_is_withdrawn_once_taken(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    connections = OpenConnections()
    taken: list[bool] = []

    def take() -> tuple[socket.socket, Any, OpenConnections]:
        taken.append(True)
        return pair[0], pair[0].recv, connections

    # What geo_ws's gunicorn worker offers: its own key besides gunicorn's and the
    # gevent-websocket stand-in.
    environ: dict[str, Any] = {
        TAKE_SOCKET: take,
        "gunicorn.sock": pair[1],
        "wsgi.websocket": object(),
    }
    transport = take_over(environ)
    assert transport is not None and taken == [True]
    assert transport.sock is pair[0] and transport.connections is connections
    assert transport.detachable and not transport.stop_iteration and not transport.upgraded
    assert TAKE_SOCKET not in environ and "wsgi.websocket" not in environ
    assert list(transport.end_response()) == []


def test_gunicorns_gevent_worker_socket_ends_the_call_with_stop_iteration(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    transport = take_over({"gunicorn.socket": pair[0]})
    assert transport is not None and transport.sock is pair[0]
    # Counted where geo_ws.gunicorn_hooks finds them at shutdown; never parked.
    assert not transport.detachable and transport.connections is FOREIGN_CONNECTIONS
    pair[1].sendall(b"frame")
    assert transport.recv(16) == b"frame"
    with pytest.raises(StopIteration):
        transport.end_response()


def test_gunicorns_pywsgi_worker_reads_what_its_reader_buffered_first(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    pair[1].sendall(b"buffered, then more")
    rfile = pair[0].makefile("rb")
    assert rfile.read(9) == b"buffered,"  # pywsgi's parser read this far
    transport = take_over({"gunicorn.sock": pair[0], "wsgi.input": rfile})
    assert transport is not None and transport.sock is pair[0]
    assert transport.recv(64) == b" then more"
    # Behind a middleware (start_response not pywsgi's): closing the reader ends the
    # handler's keep-alive loop.
    assert list(transport.end_response(lambda status, headers: None)) == []
    assert rfile.closed


def test_no_socket_on_offer_is_none() -> None:
    assert take_over({"wsgi.input": io.BytesIO()}) is None
