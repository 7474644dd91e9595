"""Sending to geo_ws clients from a process that serves none.

A cron job, a Celery task or a management command publishes on the Redis channels
that the servers' :class:`~geo_ws.delivery.broker.RedisBroker` listen to, as Flask-SocketIO's
write-only emitter does::

    from geo_ws import Emitter

    emitter = Emitter("redis://localhost:6379/0")
    emitter.broadcast("/chat/ws", "maintenance in 5 minutes")
    emitter.broadcast("/chat/ws", "for the lobby", room="lobby")
    emitter.send_to(connection_id, "just for you")
    emitter.close(connection_id, 1000, "bye")

It needs neither gevent (it does not even import it) nor an app: endpoints are named
by their full URL rule (``/chat/ws`` for ``WebSocket(blueprint, "/ws")`` on a blueprint
mounted at ``/chat``), connections by their ids.

Each message is appended to the history its servers repair from, in the same atomic
step as its publish (see :mod:`geo_ws.delivery.history`). For the clients of an
endpoint with recovery, pass ``endpoint=`` to :meth:`Emitter.send_to` and
:meth:`Emitter.close`: the message then goes to that endpoint's log, so that the
client gets it wherever it is (or resumes), positioned; broadcasts find such
endpoints by themselves.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..protocol import envelope as channels
from ..protocol.envelope import Kind, Sequencer, close_payload
from ..protocol.frames import BytesLike, Opcode
from ..protocol.outgoing import Outgoing
from .history import APPEND_SCRIPT, append_args, log_keys
from .ids import node_id, node_of
from .redis_url import make_client

if TYPE_CHECKING:
    from redis.sentinel import Sentinel

__all__ = ["Emitter"]


class Emitter:
    """Publishes sends for the WebSocket servers sharing a Redis.

    Calls block until Redis has the message and raise :class:`redis.RedisError`
    when it cannot be reached: a script learns that its message is not on its way.
    Safe to share between threads.

    With Sentinel, a call that fails during a failover raises; a later one reaches the
    new master.

    Args:
        url: the servers' ``GEO_WS_BROKER_URL`` (``redis+sentinel://`` too), or a
            :class:`redis.sentinel.Sentinel`.
        namespace: the servers' broker namespace (``geo_ws`` unless they set one).
        service_name: the master's name, with a ``Sentinel``.
        **redis_options: passed to :meth:`redis.Redis.from_url` (or to
            :meth:`~redis.sentinel.Sentinel.master_for`).
    """

    def __init__(
        self,
        url: str | Sentinel,
        *,
        namespace: str = "geo_ws",
        service_name: str | None = None,
        **redis_options: Any,
    ) -> None:
        self.namespace = namespace
        self._redis = make_client(url, service_name, **redis_options)
        # EVALSHA, loading the script again when Redis lost it (NOSCRIPT).
        self._append = self._redis.register_script(APPEND_SCRIPT)
        self._sequencer = Sequencer(node_id())
        # One publish at a time: numbers must reach Redis in order.
        self._lock = threading.Lock()

    def broadcast(self, endpoint: str, data: str | BytesLike, *, room: str | None = None) -> int:
        """Send to every client of ``endpoint`` (its full URL rule), or of its ``room``.

        Returns:
            How many server processes received it.
        """
        message = Outgoing(data)
        kind = Kind.BROADCAST if room is None else Kind.ROOM
        channel = self._channel(endpoint, None)
        return self._publish(channel, kind, endpoint, room or "", message.opcode, message.payload)

    def send_to(
        self, connection_id: str, data: str | BytesLike, *, endpoint: str | None = None
    ) -> int:
        """Send to one client, by id.

        Args:
            connection_id: the client's id.
            data: the message.
            endpoint: the client's endpoint (its full URL rule): required for the
                clients of an endpoint with recovery, whose ids move with them.

        Returns:
            How many server processes received it: 1 if the process that held the id is
            still there (for a recovery endpoint: each process serving it), else 0.
        """
        message = Outgoing(data)
        channel = self._channel(endpoint, connection_id)
        return self._publish(
            channel, Kind.SEND_TO, endpoint or "", connection_id, message.opcode, message.payload
        )

    def close(
        self,
        connection_id: str,
        code: int = 1000,
        reason: str = "",
        *,
        endpoint: str | None = None,
    ) -> int:
        """Close one client, by id.

        Args:
            connection_id: the client's id.
            code: the close code.
            reason: the close reason.
            endpoint: as for :meth:`send_to`.

        Returns:
            As :meth:`send_to`.

        Raises:
            ValueError: ``code`` may not be sent in a Close frame.
        """
        payload = close_payload(code, reason)
        channel = self._channel(endpoint, connection_id)
        return self._publish(
            channel, Kind.CLOSE, endpoint or "", connection_id, Opcode.CLOSE, payload
        )

    def _channel(self, endpoint: str | None, connection_id: str | None) -> str:
        """Where a send goes: a recovery endpoint's log, else the channel of all nodes
        (``connection_id`` ``None``) or of the node that holds the id."""
        if endpoint is not None and self._redis.sismember(
            channels.recovery_endpoints(self.namespace), endpoint
        ):
            return channels.channel_of_endpoint(self.namespace, endpoint)
        if connection_id is None:
            return channels.channel_all(self.namespace)
        return channels.channel_of(self.namespace, _node(connection_id))

    def _publish(
        self, channel: str, kind: Kind, endpoint: str, target: str, opcode: int, payload: Any
    ) -> int:
        with self._lock:
            envelope = self._sequencer.envelope(channel, kind, endpoint, target, opcode, payload)
            receivers: int = self._append(
                keys=log_keys(channel), args=append_args(channel, envelope, None)
            )
        return receivers

    def disconnect(self) -> None:
        """Close the connections to Redis."""
        self._redis.close()


def _node(connection_id: str) -> str:
    node = node_of(connection_id)
    if not node:
        raise ValueError(f"{connection_id!r} is not a geo_ws connection id (NODE.TOKEN)")
    return node
