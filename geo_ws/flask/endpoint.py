"""Robyn's ``WebSocket(app, path)`` API on Flask.

An endpoint is a Flask URL rule with ``websocket=True``, so converters, blueprints,
``url_prefix`` and ``before_request`` hooks work as for any view, and an HTTP route
may share the path. The view checks the handshake, takes the socket over, answers
101 and runs the connect handler on the request's own greenlet. When the server lets
the socket outlive the WSGI call (geo_ws's own), an idle connection then parks: it
holds no greenlet until data comes, and its handlers run on worker greenlets inside
the same request context, which is torn down when the connection closes.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast
from weakref import WeakKeyDictionary

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    has_app_context,
    request,
)
from werkzeug.routing import Rule, WebsocketMismatch

from .._compat.flask import (
    current_object,
)
from ..delivery.broker import Broker
from ..delivery.history import Recovery
from ..delivery.iplimits import IPLimits, Release, ip_limits, no_release
from ..delivery.presence import Presence, PresenceEvent, presence_for
from ..delivery.registry import Registry
from ..exceptions import HandshakeError
from ..io.connection import Connection
from ..io.options import UNSET, Options
from ..protocol.deflate import DeflateOptions, negotiate
from ..protocol.handshake import (
    check_origin,
    check_request,
    is_upgrade_request,
    response_101,
    select_subprotocol,
)
from ..protocol.resume import SUBPROTOCOL
from ..server.quick import register_direct_lane
from ..server.wsgi import Transport, take_over
from .appstate import AppState, Handler, app_state
from .connector import Data, WebSocketConnector
from .direct import direct_lane
from .metrics import install as install_metrics
from .metrics import meter_of
from .recovery import as_recovery

if TYPE_CHECKING:
    pass

__all__ = ["EVENTS", "INJECTABLE", "WebSocket"]

logger = logging.getLogger("geo_ws")

F = TypeVar("F", bound=Callable[..., Any])

EVENTS = ("connect", "message", "close")
"""The events a handler can be registered for."""
INJECTABLE = ("ws", "msg", "global_dependencies", "router_dependencies")
"""The parameter names a handler may declare, in any subset and order."""


def _websocket_mismatch(error: WebsocketMismatch) -> Response:
    """A handshake to an HTTP-only path is a 404; a plain request to a WebSocket-only path, 426."""
    if is_upgrade_request(request.environ):
        return Response("no WebSocket endpoint at this URL\n", 404, mimetype="text/plain")
    return Response(
        "this URL only serves WebSocket connections\n",
        426,
        [("Upgrade", "websocket")],  # Connection is the server's: see check_request
        mimetype="text/plain",
    )


class WebSocket:
    """A WebSocket endpoint on a Flask app or Blueprint, with Robyn's API.

    .. code-block:: python

        websocket = WebSocket(app, "/web_socket")

        @websocket.on("message")
        def message(ws, msg):
            ws.sync_broadcast(msg)
            return "sent"

    Settings that are not passed come from the app's ``GEO_WS_<NAME>`` config (e.g.
    ``GEO_WS_MAX_MESSAGE_SIZE``), else the default named here; see :meth:`options`.

    Args:
        app: a :class:`flask.Flask` app or a :class:`flask.Blueprint` (the endpoint
            exists on each app the blueprint is registered on, under its prefix).
        path: a Flask rule; converters land in ``ws.path_params``.
        endpoint: the Flask endpoint name (default: derived from ``path``).
        max_message_size: the largest message accepted, in bytes; a larger one closes
            the connection with 1009. ``None`` accepts any size. Default 1 MiB.
        max_outbox_size: how many bytes may wait for a client that does not read
            before it is closed with 1008. Default 16 MiB.
        close_timeout: how long a closing handshake may take, in seconds; a client
            that does not answer our Close by then is dropped. Default 5.
        ping_interval: seconds between keepalive pings (``None``: no pings). The
            default, 20, keeps connections open through proxies that drop idle ones
            after 60 s.
        ping_timeout: seconds a client has to answer a ping before it is closed with
            1011 "keepalive ping timeout". Default 20.
        allowed_origins: if given, handshakes whose ``Origin`` is not listed get 403
            (include ``None`` to accept clients that send no ``Origin``). Default: any.
        subprotocols: the subprotocols this endpoint speaks, by preference; the first
            one the client offers is chosen and lands in ``ws.subprotocol``. Default:
            none.
        max_connections: beyond this many open connections, handshakes get 503.
            Default: no limit.
        compression: ``"deflate"`` (or a :class:`~geo_ws.protocol.deflate.DeflateOptions` to tune
            window bits, memory level, context takeover and the size below which messages
            go uncompressed) negotiates permessage-deflate with clients that offer it;
            ``None`` (the default) never compresses.
        max_messages_per_second: messages a client may send per second, on average;
            beyond, see ``rate_limit_action``. Default: no limit.
        max_bytes_per_second: bytes of messages (text: UTF-8) a client may send per
            second, on average. Default: no limit.
        rate_limit_burst: seconds' worth of those rates a client may send at once after
            a pause. Default 1.
        rate_limit_action: ``"close"`` (the default) closes a client over a rate limit
            with 1008 "rate limit exceeded"; ``"drop"`` drops its messages over the limit
            (logging a warning per client every 10 s at most).
        max_connections_per_ip: beyond this many open connections from one client
            address (``request.remote_addr``: use ``ProxyFix`` behind a proxy), its
            handshakes get 429; across every worker and host with a Redis broker.
            Default: no limit.
        max_handshakes_per_ip_per_minute: beyond this many handshakes from one address
            in any 60 s, its handshakes get 429 with ``Retry-After``; shared as above.
            Default: no limit.
        decorators: view decorators applied to the endpoint, innermost first (as in
            Flask's class-based views); they run before the handshake and may refuse it
            by returning or raising an HTTP error.
        broker: what carries sends to the clients of other processes and hosts: a
            :class:`~geo_ws.delivery.broker.Broker` or a URL (``redis://...``). Default: the
            app's ``GEO_WS_BROKER_URL`` config, else the ``GEO_WS_BROKER_URL``
            environment variable, else one process only (see :mod:`geo_ws.delivery.broker`).
        recovery: ``True`` (or a :class:`~geo_ws.Recovery` to size the window): clients
            that drop and come back within the window get their id, rooms and every
            message they missed (see docs/recovery.md). Read from the app's
            ``GEO_WS_RECOVERY`` config when the endpoint is added to the app. Default:
            ``None``, off.
    """

    def __init__(
        self,
        app: Flask | Blueprint,
        path: str,
        *,
        endpoint: str | None = None,
        max_message_size: int | None = UNSET,
        max_outbox_size: int = UNSET,
        close_timeout: float = UNSET,
        ping_interval: float | None = UNSET,
        ping_timeout: float = UNSET,
        allowed_origins: Collection[str | None] | None = UNSET,
        subprotocols: Sequence[str] = UNSET,
        max_connections: int | None = UNSET,
        compression: str | DeflateOptions | None = UNSET,
        max_messages_per_second: float | None = UNSET,
        max_bytes_per_second: float | None = UNSET,
        rate_limit_burst: float = UNSET,
        rate_limit_action: str = UNSET,
        max_connections_per_ip: int | None = UNSET,
        max_handshakes_per_ip_per_minute: int | None = UNSET,
        decorators: Sequence[Callable[[Callable[..., Any]], Callable[..., Any]]] = (),
        broker: Broker | str | None = None,
        recovery: bool | Recovery | None = UNSET,
    ) -> None:
        self._explicit = {
            name: value
            for name, value in locals().items()
            if name in Options.names() and value is not UNSET
        }
        as_recovery(Options.resolve(self._explicit, {}).recovery)  # fail now on a bad value
        self._options: WeakKeyDictionary[Flask, Options] = WeakKeyDictionary()
        self._ip_limits: WeakKeyDictionary[Flask, IPLimits | None] = WeakKeyDictionary()
        self._broker_option = broker
        self.path = path
        """The URL rule of the endpoint."""
        self.router_dependencies: dict[str, Any] = {}
        """What :meth:`inject` fed; handlers get it as ``router_dependencies``."""
        self._handlers: dict[str, Handler] = {}
        self._presence_hooks: list[Callable[[PresenceEvent], Any]] = []
        self._global_injections: dict[str, Any] = {}
        self._apps: list[Flask] = []
        view: Callable[..., Any] = self.view
        for decorator in decorators:
            view = decorator(view)
        app.add_url_rule(
            path,
            endpoint or "geo_ws:" + path.replace(".", "_"),
            view_func=view,
            methods=["GET"],
            websocket=True,
        )
        if isinstance(app, Blueprint):
            app.record_once(lambda setup: self._attach(cast(Flask, setup.app), setup.url_prefix))
        else:
            self._attach(app)

    def _attach(self, app: Flask, url_prefix: str | None = None) -> None:
        """Give this endpoint a registry in ``app`` (once per app)."""
        state = app_state(app)
        # Other processes know the endpoint by its full rule, as Flask joins it.
        key = "/".join((url_prefix.rstrip("/"), self.path.lstrip("/"))) if url_prefix else self.path
        recovery = as_recovery(self._explicit.get("recovery", app.config.get("GEO_WS_RECOVERY")))
        state.registries[self] = Registry(key, recovery)
        state.global_dependencies.update(self._global_injections)
        app.register_error_handler(WebsocketMismatch, _websocket_mismatch)
        install_metrics(app)
        self._apps.append(app)

    # -- registration ------------------------------------------------------------------

    def on(self, event: str) -> Callable[[F], F]:
        """Register the handler of ``event`` (``"connect"``, ``"message"`` or ``"close"``).

        The handler's parameters are injected by name, any subset of ``ws``, ``msg``,
        ``global_dependencies`` and ``router_dependencies``. Its return value is sent
        to its client. Registering a handler again replaces it.

        Raises:
            ValueError: ``event`` is not one of the three.
            TypeError: (from the decorator) the handler asks for another parameter.
        """
        if event not in EVENTS:
            raise ValueError(
                f"unknown WebSocket event {event!r}: use 'connect', 'message' or 'close'"
            )

        def decorator(fn: F) -> F:
            params = tuple(inspect.signature(fn).parameters)
            unknown = [name for name in params if name not in INJECTABLE]
            if unknown:
                raise TypeError(
                    f"{getattr(fn, '__qualname__', fn)!s} asks for {', '.join(unknown)}: "
                    f"WebSocket handlers may only take {', '.join(INJECTABLE)}"
                )
            self._handlers[event] = Handler(fn, params)
            return fn

        return decorator

    def inject(self, **dependencies: Any) -> None:
        """Add to ``router_dependencies``, seen by this endpoint's handlers."""
        self.router_dependencies.update(dependencies)

    def inject_global(self, **dependencies: Any) -> None:
        """Add to ``global_dependencies``, shared by every endpoint of the app."""
        self._global_injections.update(dependencies)
        for app in self._apps:
            app_state(app).global_dependencies.update(dependencies)

    # -- sending from anywhere ---------------------------------------------------------

    def _registry(self) -> Registry:
        """This endpoint's registry in the current app, or in its only app."""
        return self._state().registries[self]

    def _state(self) -> AppState:
        """geo_ws's state in the current app, or in this endpoint's only app."""
        if has_app_context():
            state: AppState | None = current_app.extensions.get("geo_ws")
            if state is not None and self in state.registries:
                return state
        if len(self._apps) == 1:
            return app_state(self._apps[0])
        if not self._apps:
            raise RuntimeError(
                f"WebSocket {self.path!r} is on a blueprint that no app has registered yet"
            )
        raise RuntimeError(
            f"WebSocket {self.path!r} is on several apps: send from within an app context"
        )

    @property
    def broker(self) -> Broker:
        """The broker carrying this endpoint's sends (chosen on first use).

        Its hooks let the app react to lost messages::

            @websocket.broker.on("broker_gap")
            def resync(gap):
                websocket.sync_broadcast('{"resync": true}')
        """
        return self._state().broker(self)

    def sync_send_to(self, connection_id: str, data: Data) -> bool:
        """Send ``data`` to one client by id, in any process; a missing id is a no-op.

        Returns:
            Whether the client was connected here to take it, or was forwarded to the
            process that holds it (see :meth:`geo_ws.delivery.broker.Broker.send_to`).
        """
        state = self._state()
        return state.broker(self).send_to(state.registries[self].key, connection_id, data)

    def sync_broadcast(self, data: Data, room: str | None = None) -> int:
        """Send ``data`` to every client of this endpoint, or of its ``room``, everywhere.

        Returns:
            How many clients of this process took it.
        """
        state = self._state()
        return state.broker(self).broadcast(state.registries[self].key, data, room)

    async def async_send_to(self, connection_id: str, data: Data) -> bool:
        """Awaitable :meth:`sync_send_to`."""
        return self.sync_send_to(connection_id, data)

    async def async_broadcast(self, data: Data, room: str | None = None) -> int:
        """Awaitable :meth:`sync_broadcast`."""
        return self.sync_broadcast(data, room)

    def close(self, connection_id: str, code: int = 1000, reason: str = "") -> bool:
        """Close one client by id, in any process.

        Returns:
            As :meth:`sync_send_to`.
        """
        state = self._state()
        return state.broker(self).close(state.registries[self].key, connection_id, code, reason)

    def connection_ids(self) -> list[str]:
        """The ids of the clients connected to this endpoint, in this process."""
        return list(self._registry())

    # -- presence ----------------------------------------------------------------------

    def presence(self, room: str | None = None) -> dict[str, dict[str, Any]]:
        """Who is present on this endpoint (or in its ``room``), in every process and host:
        connection id -> the dict given to :meth:`WebSocketConnector.set_presence`.

        Raises:
            redis.RedisError: with a Redis broker, Redis could not be reached.
        """
        presence, key = self._presence()
        return presence.members(key, room)

    def presence_count(self, room: str | None = None) -> int:
        """How many connections :meth:`presence` would return, without their dicts."""
        presence, key = self._presence()
        return presence.count(key, room)

    def on_presence(self, fn: F) -> F:
        """Register a hook told each :class:`~geo_ws.delivery.presence.PresenceEvent`
        (join, update, leave) of this endpoint and its rooms, once across processes.

        It runs in the process that saw the event, inside an app context: the one
        holding the connection, or for a vanished process's clients, the first to
        touch that presence after they expired. An exception is logged and ignored.
        """
        self._presence_hooks.append(fn)
        return fn

    def _presence(
        self, app: Flask | None = None, interval: float | None = None
    ) -> tuple[Presence, str]:
        """The presence of this endpoint in ``app`` (default: the current or only one),
        with its hooks attached, and the endpoint's key."""
        state = app_state(app) if app is not None else self._state()
        key = state.registries[self].key
        presence = presence_for(state.broker(self))
        if app is None:
            app = current_object(current_app) if has_app_context() else self._apps[0]
        presence.attach(key, interval, lambda event: self._tell_presence(app, event))
        return presence, key

    def _tell_presence(self, app: Flask, event: PresenceEvent) -> None:
        if not self._presence_hooks:
            return
        with app.app_context():
            for hook in self._presence_hooks:
                hook(event)

    def options(self, app: Flask | None = None) -> Options:
        """This endpoint's settings in ``app`` (default: the current app).

        Each is what was passed to the constructor, else the app's ``GEO_WS_<NAME>``
        config, else geo_ws's default; resolved on the app's first handshake.
        """
        if app is None:
            app = current_object(current_app)
        options = self._options.get(app)
        if options is None:
            options = self._options[app] = Options.resolve(self._explicit, app.config)
        return options

    # -- serving -----------------------------------------------------------------------

    def _admit(self, app: Flask, environ: dict[str, Any]) -> Release:
        """Count a handshake against its client address's limits, if any.

        Returns:
            What frees the connection slot it took, once the connection is over.

        Raises:
            HandshakeError: 429, the address is over a limit.
        """
        if app not in self._ip_limits:
            options = self.options(app)
            state = app_state(app)
            self._ip_limits[app] = ip_limits(
                options.max_connections_per_ip,
                options.max_handshakes_per_ip_per_minute,
                state.broker(self),
                state.registries[self].key,
                options.ping_interval,
            )
        limits = self._ip_limits[app]
        if limits is None:
            return no_release
        # What the app sees as request.remote_addr: ProxyFix has rewritten it already.
        return limits.admit(environ.get("REMOTE_ADDR") or "")

    def view(self, **path_params: Any) -> Response:
        """The Flask view: handshake, take the socket over, run the connection."""
        app: Flask = current_object(current_app)
        try:
            connector = self._open(app, request.environ, path_params)
        except HandshakeError as error:
            self._count_handshake(app, error.status)
            return Response(error.reason + "\n", error.status, error.headers, mimetype="text/plain")
        if connector is None:
            self._count_handshake(app, 500)
            logger.error("%s: this WSGI server cannot hand a socket over", request.path)
            return Response(
                "this server cannot upgrade to WebSocket: serve the app with geo-ws run, "
                "geo_ws.run() or gunicorn -k gevent\n",
                500,
                mimetype="text/plain",
            )
        connector._run()
        return _EndOfSocket(connector._transport)

    def serve_direct(self, app: Flask, rule: Rule, environ: dict[str, Any]) -> bool:
        """Serve a handshake that Flask's dispatch would only have passed to :meth:`view`
        (see :func:`~geo_ws.flask.direct.direct_lane`), without it.

        Returns:
            ``False``, having changed nothing, for a handshake to refuse: Flask's
            dispatch refuses it then, as usual.
        """
        try:
            connector = self._open(app, environ, {}, rule)
        except HandshakeError:
            return False
        if connector is None:
            return False
        cast(contextvars.Context, connector._context).run(connector._run)
        return True

    def _open(
        self,
        app: Flask,
        environ: dict[str, Any],
        path_params: dict[str, Any],
        direct: Rule | None = None,
    ) -> WebSocketConnector | None:
        """Check the handshake, take the socket over and answer 101.

        Returns:
            The new client, or ``None`` if the server cannot hand its socket over.

        Raises:
            HandshakeError: the handshake is refused (before anything was sent).
        """
        options = self.options(app)
        key = check_request(environ)
        if options.allowed_origins is not None:
            check_origin(environ, options.allowed_origins)
        limit = options.max_connections
        if limit is not None and len(self._registry()) >= limit:
            raise HandshakeError(503, f"this endpoint is at its limit of {limit}")
        if not app_state(app).broker(self).listen():  # it would miss what others send
            raise HandshakeError(503, "not connected to the other processes yet: try again")
        subprotocols = options.subprotocols
        if app_state(app).registries[self].recovery is not None:
            subprotocols = (SUBPROTOCOL, *subprotocols)
        subprotocol = select_subprotocol(environ, subprotocols)
        negotiated = None
        if options.compression is not None:
            offers = environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS", "")
            negotiated = negotiate(offers, options.compression)
        release = self._admit(app, environ)  # last: a refusal before it counts nothing
        transport = take_over(environ)
        if transport is None:
            release()
            return None
        if transport.upgraded:
            subprotocol = negotiated = None  # the server's own 101 offered neither
        connection = Connection(
            transport.sock,
            transport.recv,
            deflate=negotiated[1] if negotiated else None,
            **options.connection_settings(),
        )
        connector = WebSocketConnector(
            self, app, connection, transport, environ, path_params, direct
        )
        connector.subprotocol = subprotocol
        connector._release = release
        headers = [("Sec-WebSocket-Protocol", subprotocol)] if subprotocol else []
        if negotiated:
            headers.append(("Sec-WebSocket-Extensions", negotiated[0]))
        if not transport.upgraded:  # else the server has sent its own 101
            connection.send_handshake(response_101(key, headers))
        return connector

    def _count_handshake(self, app: Flask, status: int) -> None:
        """Count a refused handshake, if ``app`` counts."""
        meter = meter_of(app, app_state(app).registries[self].key)
        if meter is not None:
            meter.handshake(status)


class _EndOfSocket(Response):
    """What the view returns once the socket is done: ends the WSGI call quietly."""

    def __init__(self, transport: Transport) -> None:
        # A content type, however empty, spares Werkzeug its look-up of one in the
        # headers (an exception raised and caught per handshake); nothing is sent.
        super().__init__(content_type="")
        self._transport = transport

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self._transport.end_response(start_response)


register_direct_lane(direct_lane)
