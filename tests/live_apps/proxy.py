"""A TCP proxy on loopback that a test can cut: every connection through it is reset
(RST, as a network failure would), and new ones are refused while it is paused."""

from __future__ import annotations

import socket
import struct
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.server import StreamServer


class CuttingProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target`` (``host:port``), both ways.

    Args:
        target: the address to forward to.
    """

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._pairs: list[tuple[Any, Any]] = []
        self.accepted = 0
        """How many connections it forwarded."""
        self.paused = False
        """While set, new connections are reset at once."""
        self._server = StreamServer(("127.0.0.1", 0), self._handle)
        self._server.start()
        self.address = f"127.0.0.1:{self._server.address[1]}"
        """Where clients connect."""

    def _handle(self, client: Any, _address: Any) -> None:
        if self.paused:
            _reset(client)
            return
        try:
            upstream = gsocket.create_connection(self._target, timeout=5)
        except OSError:
            _reset(client)
            return
        self.accepted += 1
        pair = (client, upstream)
        self._pairs.append(pair)
        pump = gevent.spawn(_pump, upstream, client)
        _pump(client, upstream)
        pump.join()
        if pair in self._pairs:
            self._pairs.remove(pair)

    def cut(self, *, pause: bool = False) -> int:
        """Reset every connection through the proxy, both sides.

        Args:
            pause: and reset new ones too, until :attr:`paused` is unset.

        Returns:
            How many connections it cut.
        """
        self.paused = self.paused or pause
        pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)
        return len(pairs)

    def stop(self) -> None:
        """Cut everything and stop listening."""
        self._server.stop(timeout=1)
        self.cut()


def _pump(source: Any, destination: Any) -> None:
    """Copy bytes until either side ends."""
    try:
        while data := source.recv(65536):
            destination.sendall(data)
    except OSError:
        pass


def _reset(sock: Any) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP reset, not a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
