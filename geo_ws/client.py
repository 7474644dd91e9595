"""A synchronous WebSocket client on gevent, built on geo_ws's own sans-I/O code.

:func:`connect` opens a connection and returns a :class:`ClientConnection` whose calls
block the calling greenlet only: the sockets are gevent's, so thousands of connections
run side by side in one process, monkey-patched or not. It is the client of
``geo-ws load`` and of geo_ws's own tests, and it is general enough for scripts::

    from geo_ws.client import connect

    with connect("ws://127.0.0.1:8000/echo") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"

The opening handshake (RFC 6455 section 4.1) is
:class:`geo_ws.protocol.handshake.ClientHandshake`, frames both ways are
:class:`geo_ws.protocol.machine.Protocol` in client mode (every frame sent masked with a
fresh random key), and the connection is the server's own
:class:`geo_ws.io.connection.Connection` in client mode: one reader, one outbox, one
closing handshake for both sides.

The client reads whenever the event loop runs, that is whenever a greenlet waits
(in :meth:`~ClientConnection.recv`, :meth:`~ClientConnection.ping`, or anywhere in a
monkey-patched program): pings from the server are answered and messages queued for
``recv`` meanwhile. One greenlet at a time may wait in ``recv``; any greenlet may send,
and :meth:`~ClientConnection.ping` and :meth:`~ClientConnection.close` also work while
another greenlet waits in ``recv``.

``connect(url, resume=True)`` returns a :class:`ResumingConnection` instead: for an
endpoint with ``recovery=``, it comes back by itself after a drop and resumes, so that
``recv`` goes on returning every message once, in order (or raises
:class:`MessagesLost` where a resume came too late); see docs/recovery.md.
"""

from .io.client import ClientConnection, connect
from .io.resuming import MessagesLost, ResumingConnection

__all__ = ["ClientConnection", "MessagesLost", "ResumingConnection", "connect"]
