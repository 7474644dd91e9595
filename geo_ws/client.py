"""A synchronous WebSocket client on gevent, built on geo_ws's own sans-I/O code.

:func:`connect` opens a connection and returns a :class:`ClientConnection` whose calls
block the calling greenlet only: the sockets are gevent's, so thousands of connections
run side by side in one process, monkey-patched or not. It is the client of
``geo-ws load`` and of geo_ws's own tests, and it is general enough for scripts::

    from geo_ws.client import connect

    with connect("ws://127.0.0.1:8000/echo") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"

Frames are parsed by :class:`geo_ws.protocol.machine.Protocol` in client mode and built by
:func:`geo_ws.protocol.frames.encode_frame` with a fresh random mask; the client side of the
opening handshake (RFC 6455 section 4.1) is in :mod:`geo_ws.io.client`.

A synchronous client only reads when asked to: pings from the server are answered,
and its Close frame is seen, while a greenlet is in :meth:`~ClientConnection.recv`,
:meth:`~ClientConnection.ping` or :meth:`~ClientConnection.close`. One greenlet at a
time may read; any greenlet may send, and :meth:`~ClientConnection.ping` and
:meth:`~ClientConnection.close` also work while another greenlet waits in ``recv``.
"""

from .io.client import ClientConnection, connect

__all__ = ["ClientConnection", "connect"]
