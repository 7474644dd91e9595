"""One client of an endpoint: Robyn's ``WebSocketConnector`` and the connection's life."""

from __future__ import annotations

import contextvars
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import greenlet
from flask import Flask
from werkzeug.datastructures import EnvironHeaders, Headers
from werkzeug.routing import Rule

from .._compat.flask import current_request_context, push_without_matching
from ..delivery.broker import Broker
from ..delivery.ids import new_id
from ..delivery.presence import Presence
from ..exceptions import ConnectionClosed
from ..io.concurrency import run_coroutine
from ..io.connection import Connection, Interrupted
from ..protocol.resume import SUBPROTOCOL
from ..server.wsgi import OpenConnections, Transport
from .appstate import app_state
from .metrics import meter_of
from .params import QueryParams
from .recovery import Resumption

if TYPE_CHECKING:
    from .._compat.flask import RequestScope
    from .endpoint import WebSocket

__all__ = ["Data", "WebSocketConnector"]

logger = logging.getLogger("geo_ws")

Data = str | bytes | bytearray | memoryview


class WebSocketConnector:
    """One client of an endpoint: what handlers receive as ``ws``.

    Robyn's ``WebSocketConnector``: an id, the request's parameters, and sends to this
    or any other client of the same endpoint.
    """

    def __init__(
        self,
        endpoint: WebSocket,
        app: Flask,
        connection: Connection,
        transport: Transport,
        environ: dict[str, Any],
        path_params: dict[str, Any],
        direct: Rule | None = None,
    ) -> None:
        self.id = new_id()
        """Unique id of this client (``NODE.TOKEN``: NODE says which process holds it)."""
        self.path_params = path_params
        """Values of the rule's converters (``/rooms/<room>`` -> ``{"room": ...}``)."""
        self.remote_addr: str | None = environ.get("REMOTE_ADDR")
        """The client's address."""
        self.subprotocol: str | None = None
        """The subprotocol chosen in the handshake, if any."""
        self.resumed = False
        """Whether this client came back within the recovery window, with the same id
        and rooms (an endpoint with ``recovery=``; see docs/recovery.md)."""
        self.recovered = False
        """Whether it also gets every message it missed, replayed right after the
        connect handler; ``False`` for a resume past the window: re-sync it."""
        self._resumption: Resumption | None = None
        self._environ = environ
        self._endpoint = endpoint
        self._app = app
        self._state = state = app_state(app)
        self._registry = state.registries[endpoint]
        self._connection = connection
        self._transport = transport
        self._parking = False
        # Frees this client's slot in its address's connection limit (see WebSocket._admit).
        self._release: Callable[[], None] | None = None
        # The dict given to set_presence, and the scopes (None: the endpoint) it is in.
        self._presence_info: dict[str, Any] | None = None
        self._present_in: set[str | None] = set()
        # receive() saw this client's connection end: a handler's ConnectionClosed then
        # is that ending, not the handler's failure.
        self._ended_in_receive = False
        self._handling = False  # one of this client's handlers runs
        # The request context this connection holds past the view (popped at _end), and
        # the greenlet context that holds it.
        self._request_context: RequestScope | None = None
        self._context: contextvars.Context | None = None
        # Served without Flask's dispatch (direct_lane): the rule matched, until the
        # request context is made for the first handler.
        self._direct = direct
        if direct is not None:
            self._context = contextvars.Context()
        self._meter = meter_of(app, self._registry.key)  # None: the app does not count

    @cached_property
    def headers(self) -> Headers:
        """The handshake's request headers."""
        return EnvironHeaders(self._environ)

    @property
    def latency(self) -> float | None:
        """The last keepalive ping's round trip, in seconds (``None`` before the first)."""
        return self._connection.latency

    @cached_property
    def query_params(self) -> QueryParams:
        """The handshake's query string (Robyn's ``QueryParams``)."""
        query: str = self._environ.get("QUERY_STRING", "")
        return QueryParams(query.encode("latin-1").decode("utf-8", "replace"))

    # -- Robyn's API -------------------------------------------------------------------

    @cached_property
    def _broker(self) -> Broker:
        return self._state.broker(self._endpoint)

    def sync_send_to(self, connection_id: str, data: Data) -> bool:
        """Send ``data`` to a client of this endpoint by id (``ws.id`` for this one).

        The client may be in another process or host (with a broker such as Redis).
        Sending to an id that is not connected does nothing.

        Returns:
            Whether that client was connected here to take it, or was forwarded to the
            process that holds it.
        """
        return self._broker.send_to(self._registry.key, connection_id, data)

    def sync_broadcast(self, data: Data, room: str | None = None) -> int:
        """Send ``data`` to every client of this endpoint, this one included, everywhere.

        Args:
            data: ``str`` for text, bytes for binary.
            room: send only to the clients that joined this room (see :meth:`join`).

        Returns:
            How many clients of this process took it.
        """
        return self._broker.broadcast(self._registry.key, data, room)

    async def async_send_to(self, connection_id: str, data: Data) -> bool:
        """Awaitable :meth:`sync_send_to`."""
        return self.sync_send_to(connection_id, data)

    async def async_broadcast(self, data: Data, room: str | None = None) -> int:
        """Awaitable :meth:`sync_broadcast`."""
        return self.sync_broadcast(data, room)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close this client: unregister it at once, then send Close and close TCP.

        From one of this client's own handlers the Close goes out when the handler
        returns, after its return value; from anywhere else, at once.
        """
        self._connection.request_close(code, reason)
        if not (self._handling and self._resumption is not None):
            self._unregister()
        # Else its handler's return value is on its way through the log: the connection
        # leaves the registry once the handler has returned.

    def receive(self, timeout: float | None = None) -> str | bytes:
        """Wait for this client's next message: the blocking-loop style.

        For apps that prefer a loop to callbacks, inside the connect handler::

            @websocket.on("connect")
            def connect(ws):
                while True:
                    ws.sync_send_to(ws.id, ws.receive().upper())

        Messages taken here do not reach the message handler.

        Args:
            timeout: seconds to wait at most; ``None`` waits for ever.

        Raises:
            ConnectionClosed: the client closed (its code), the connection was lost
                (1006) or failed, or :meth:`close` was called (the code asked for).
            TimeoutError: no message came within ``timeout``.
        """
        if self._resumption is not None:
            self._resumption.release()  # a connect handler that loops: go live now
        try:
            return self._connection.receive_or_closed(timeout)
        except ConnectionClosed:
            self._ended_in_receive = True
            raise

    # -- rooms -------------------------------------------------------------------------

    def join(self, room: str) -> None:
        """Put this client in ``room``: it gets ``sync_broadcast(data, room=room)`` sent
        from any process. It leaves its rooms when it closes."""
        self._change_rooms(self._registry.join, room)
        if room in self._registry.rooms_of(self.id) and self._presence_info is not None:
            self._present_in.add(room)
            self._presence.add(self._registry.key, self.id, self._presence_info, [room])

    def leave(self, room: str) -> None:
        """Take this client out of ``room`` (a no-op if it is not in it)."""
        if room in self._present_in:
            self._present_in.discard(room)
            self._presence.discard(self._registry.key, self.id, [room])
        self._change_rooms(self._registry.leave, room)

    def _change_rooms(self, change: Callable[[str, str], bool], room: str) -> None:
        """Join or leave; for a resuming client, keep its session in step (and change
        nothing once its id was resumed on another connection)."""
        if self._resumption is None:
            change(self.id, room)
        elif self._registry.get(self.id) is self._connection:
            change(self.id, room)
            self._resumption.save()

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this client is in."""
        return self._registry.rooms_of(self.id)

    # -- presence ----------------------------------------------------------------------

    @cached_property
    def _presence(self) -> Presence:
        interval = self._connection.ping_interval
        return self._endpoint._presence(self._app, interval)[0]

    @property
    def presence(self) -> dict[str, Any] | None:
        """The dict this client is present with (see :meth:`set_presence`), or ``None``."""
        return None if self._presence_info is None else dict(self._presence_info)

    def set_presence(self, info: Mapping[str, Any]) -> None:
        """Make this client present, with ``info``, in the endpoint's presence and in its
        rooms' (those it is in and will join), in every process: see
        :meth:`WebSocket.presence`. Again: replaces ``info``. It leaves presence when it
        closes, or by :meth:`clear_presence`.

        Args:
            info: a small dict that JSON can encode (a name, an avatar's URL): with a
                Redis broker, it is written again every half ping interval.
        """
        if self.id not in self._registry:
            return  # closed: present no more
        self._presence_info = dict(info)
        self._present_in = {None, *self.rooms}
        self._presence.add(self._registry.key, self.id, info, self._present_in)

    def clear_presence(self) -> None:
        """Take this client out of presence (a no-op if it is not present)."""
        if self._presence_info is not None:
            scopes, self._presence_info, self._present_in = self._present_in, None, set()
            self._presence.discard(self._registry.key, self.id, scopes)

    # -- the connection's life ---------------------------------------------------------

    def _run(self) -> None:
        """Serve the connection from its connect handler on, on the request's greenlet.

        Returns once it has closed, or once it is idle and parked (when the server
        leaves the socket to it past the WSGI call): then a worker greenlet serves it
        whenever data comes, inside this request's context, until it closes.
        """
        connection = self._connection
        connections = self._transport.connections
        if connections is not None:
            connections.add(connection)
        self._parking = self._transport.detachable and connection.can_park
        if self._meter is not None:
            self._meter.opened(self._registry, connection, self._broker)
        if self.subprotocol == SUBPROTOCOL and self._registry.recovery is not None:
            if not self._resume():
                self._end()
                return
        else:
            self._registry.add(self.id, connection)
        self._serve(connect=True)

    def _resume(self) -> bool:
        """A resuming client: its first message, its id and rooms, its hello.

        Returns:
            ``False`` if it sent no valid first message (the connection is closed).
        """
        resumption = Resumption(self._broker, self._registry, self._connection)
        if not resumption.start():
            return False
        self._resumption = resumption
        self.id = resumption.id
        self.resumed = resumption.resumed
        self.recovered = resumption.recovered
        return True

    def _unregister(self, *, stopping: bool = False) -> None:
        """Take this client out of the registry and of presence (unless another
        connection resumed its id meanwhile); keep its session for a resume."""
        rooms = self._registry.rooms_of(self.id)
        if self._registry.get(self.id) is self._connection:
            self._registry.remove(self.id)
            self.clear_presence()
        if self._resumption is not None:
            self._resumption.dropped(rooms, write=not stopping)

    def _serve(self, connect: bool = False) -> None:
        """Handle what has come; park when nothing more has; once closed, run the
        close handler (exactly once) and close."""
        connection = self._connection
        try:
            if connect:
                self._dispatch("connect", "")
                if self._resumption is not None:
                    self._resumption.release()
            while connection.close_request is None:
                try:
                    message = connection.receive_nowait() if self._parking else connection.receive()
                except (Interrupted, ConnectionClosed):
                    break
                if message is None:
                    self._park()
                    return
                self._dispatch("message", message)
        except BaseException:
            # Killed (server stop) or a bug: nothing more may be sent.
            self._unregister(stopping=True)
            self._dispatch("close", "", deliver=False)
            connection.abort()
            self._end()
            raise
        self._unregister()
        if self._meter is not None:
            self._meter.closing(connection)
        request_ = connection.close_request
        self._dispatch(
            "close", "", deliver=connection.can_send and not (request_ and request_.error)
        )
        # A failing close handler turns a clean local close into 1011.
        request_ = connection.close_request
        if request_ is not None:
            connection.close(request_.code, request_.reason)
        else:
            connection.close(connection.echo_code, "")
        self._end()

    def _park(self) -> None:
        """Let the current greenlet go until data (or a close request) comes."""
        connection = self._connection
        connections = cast(OpenConnections, self._transport.connections)
        if connection not in connections.detached:
            if self._context is None:
                # Still in the view: keep its request context for the handlers to come.
                # Pushed once more, Flask's pop at the view's end leaves it (and its
                # teardown) to _end; the greenlet's own context holds it meanwhile.
                self._push(current_request_context())
                self._context = greenlet.getcurrent().gr_context
            connections.detach(connection)
        connection.park(self._serve, self._context)

    def _push(self, context: RequestScope) -> None:
        """Push ``context`` without matching the URL again: the rule matched stands."""
        push_without_matching(context)
        self._request_context = context

    def _enter_request(self, rule: Rule) -> None:
        """Make and push the request context that Flask's dispatch would have made
        (the first handler of a connection served by :func:`direct_lane` needs it)."""
        self._direct = None
        context = self._app.request_context(self._environ)
        context.request.url_rule = rule
        context.request.view_args = {}
        self._push(context)

    def _end(self) -> None:
        """The connection is over: leave the server's set, end the request context."""
        connections = self._transport.connections
        if connections is not None:
            connections.discard(self._connection)
        if self._meter is not None:
            self._meter.ended(self._connection)
        if self._release is not None:
            self._release()
        context, self._request_context = self._request_context, None
        if context is not None:
            try:
                context.pop()  # the view's context, kept when the connection parked
            except Exception:
                logger.exception("tearing down the request of WebSocket %s", self._endpoint.path)

    def _dispatch(self, event: str, message: str | bytes, *, deliver: bool = True) -> None:
        """Run the ``event`` handler; send what it returns; on error, close with 1011."""
        handler = self._endpoint._handlers.get(event)
        if handler is None:
            return
        # Timed for the metrics: every connect and close, one message in SAMPLE_EVERY.
        meter = self._meter
        started = None if meter is None else meter.started(event)
        try:
            if self._direct is not None:
                self._enter_request(self._direct)
            self._handling = True
            try:
                result = handler.fn(
                    **{name: self._inject(name, message) for name in handler.params}
                )
                if inspect.isawaitable(result):
                    result = run_coroutine(result)
            finally:
                self._handling = False
            if deliver and result is not None:
                self._send_result(event, result)
        except ConnectionClosed:
            if not self._ended_in_receive:
                # Another connection's ending, raised through the handler: a failure.
                self._handler_failed(event)
            # Else from ws.receive(): this connection ended while the handler waited on
            # it. Not an error; the session sees the same ending and closes accordingly.
        except Exception:
            self._handler_failed(event)
        if meter is not None and started is not None:
            meter.handled(event, time.perf_counter() - started)

    def _handler_failed(self, event: str) -> None:
        """Log the handler's exception (being handled) and close with 1011."""
        logger.exception("the %s handler of WebSocket %s failed", event, self._endpoint.path)
        self._connection.request_close(1011, "internal server error", error=True)

    def _inject(self, name: str, message: str | bytes) -> Any:
        if name == "ws":
            return self
        if name == "msg":
            return message
        if name == "global_dependencies":
            return self._state.global_dependencies
        return self._endpoint.router_dependencies

    def _send_result(self, event: str, result: Any) -> None:
        """Send a handler's return value: str as text, bytes as binary, dict/list as JSON."""
        if isinstance(result, (dict, list)):
            result = self._app.json.dumps(result)
        if not isinstance(result, (str, bytes, bytearray, memoryview)):
            raise TypeError(
                f"the {event} handler returned {type(result).__name__}: return str, bytes, "
                "dict, list or None"
            )
        if self._resumption is not None:  # through the log: positioned like the rest
            self._broker.send_to(self._registry.key, self.id, result)
        else:
            self._connection.send(result)
