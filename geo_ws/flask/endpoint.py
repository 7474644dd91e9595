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
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar, cast
from weakref import WeakKeyDictionary

import greenlet
from flask import (
    Blueprint,
    Flask,
    Request,
    Response,
    current_app,
    has_app_context,
    request,
    signals,
)
from flask.sessions import SecureCookieSessionInterface
from werkzeug.datastructures import EnvironHeaders, Headers
from werkzeug.routing import Rule, WebsocketMismatch

from .._compat.flask import (
    current_object,
    current_request_context,
    mark_serving,
    push_without_matching,
)
from ..delivery.broker import Broker, get_broker
from ..delivery.ids import new_id
from ..delivery.registry import Registry
from ..exceptions import ConnectionClosed, HandshakeError
from ..io.concurrency import run_coroutine
from ..io.connection import Connection, Interrupted
from ..io.options import UNSET, Options
from ..protocol.deflate import DeflateOptions, negotiate
from ..protocol.handshake import (
    check_origin,
    check_request,
    is_upgrade_request,
    response_101,
    select_subprotocol,
)
from ..server.builtin import register_direct_lane
from ..server.wsgi import OpenConnections, Transport, take_over
from .params import QueryParams

if TYPE_CHECKING:
    from flask.ctx import RequestContext

__all__ = ["EVENTS", "INJECTABLE", "WebSocket", "WebSocketConnector", "direct_lane"]

logger = logging.getLogger("geo_ws")

F = TypeVar("F", bound=Callable[..., Any])
Data = str | bytes | bytearray | memoryview

EVENTS = ("connect", "message", "close")
"""The events a handler can be registered for."""
INJECTABLE = ("ws", "msg", "global_dependencies", "router_dependencies")
"""The parameter names a handler may declare, in any subset and order."""


@dataclass(frozen=True)
class _Handler:
    """A handler and the names it asked for, inspected once at registration."""

    fn: Callable[..., Any]
    params: tuple[str, ...]


@dataclass
class _AppState:
    """geo_ws's state in one Flask app, kept in ``app.extensions["geo_ws"]``."""

    global_dependencies: dict[str, Any] = field(default_factory=dict)
    registries: dict[WebSocket, Registry] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    """The app's config, read when a broker is chosen."""
    brokers: dict[WebSocket, Broker] = field(default_factory=dict)
    direct: dict[str, tuple[WebSocket, Rule]] | None = None
    """The paths :func:`direct_lane` serves, made at the first handshake."""

    def broker(self, endpoint: WebSocket) -> Broker:
        """The endpoint's broker, chosen on first use (the app's config may come late).

        The endpoint's ``broker=``, else the app's ``GEO_WS_BROKER_URL``, else the
        environment's, else a :class:`~geo_ws.delivery.broker.MemoryBroker`.
        """
        broker = self.brokers.get(endpoint)
        if broker is None:
            broker = get_broker(
                endpoint._broker_option
                or self.config.get("GEO_WS_BROKER_URL")
                or os.environ.get("GEO_WS_BROKER_URL")
            )
            broker.attach(self.registries[endpoint])
            self.brokers[endpoint] = broker
        return broker


def _app_state(app: Flask) -> _AppState:
    state: _AppState | None = app.extensions.get("geo_ws")
    if state is None:
        state = app.extensions["geo_ws"] = _AppState(config=app.config)
    return state


# What Flask's dispatch of a request does besides calling the view, where an app can
# hook in: a handshake to an app that uses none of it may skip the dispatch.
_FLASK_DISPATCH = (
    "__call__",
    "wsgi_app",
    "request_context",
    "app_context",
    "full_dispatch_request",
    "preprocess_request",
    "dispatch_request",
    "finalize_request",
    "create_url_adapter",
)
_REQUEST_HOOKS = (
    "before_request_funcs",
    "after_request_funcs",
    "teardown_request_funcs",
    "url_value_preprocessors",
)
_DISPATCH_SIGNALS = (
    signals.request_started,
    signals.request_finished,
    signals.request_tearing_down,
    signals.got_request_exception,
    signals.appcontext_pushed,
    signals.appcontext_popped,
    signals.appcontext_tearing_down,
)


def direct_lane(app: Any) -> Callable[[dict[str, Any]], bool] | None:
    """Handshakes that need not go through Flask's dispatch, for geo_ws's server.

    Flask's dispatch of a handshake makes a request and its contexts, matches the URL,
    runs the app's hooks, calls the view and finalizes its response: about a third of
    what a handshake costs. When the app can observe none of that (no request hooks,
    signals or middleware; a plain Flask class with Flask's request class and cookie
    sessions) and the path is exactly an endpoint's rule (no converters, no view
    decorators), the endpoint takes the handshake straight from the server. The
    request context is made only when a handler first runs, so ``flask.request``,
    ``g``, ``session`` and ``current_app`` are there for handlers as always.

    Returns:
        For a Flask app, a function that serves a WebSocket handshake's environ and
        returns ``True``, or returns ``False`` having done nothing (the app must
        dispatch it); ``None`` for another WSGI app.
    """
    if not isinstance(app, Flask) or any(
        getattr(type(app), name) is not getattr(Flask, name) for name in _FLASK_DISPATCH
    ):
        return None

    def serve(environ: dict[str, Any]) -> bool:
        state: _AppState | None = app.extensions.get("geo_ws")
        if state is None or "wsgi_app" in app.__dict__:  # a middleware wraps the app
            return False
        if any(signal.receivers for signal in _DISPATCH_SIGNALS):
            return False
        # Flask's own request and cookie sessions: made later (or never), and the cookie
        # saved at the view's end would not be sent anyway. Others may do more.
        if app.request_class is not Request or (
            type(app.session_interface) is not SecureCookieSessionInterface
        ):
            return False
        routes = state.direct
        if routes is None:
            routes = state.direct = _direct_routes(app)
        route = routes.get(environ["PATH_INFO"])
        return route is not None and route[0]._serve_direct(app, route[1], environ)

    return serve


register_direct_lane(direct_lane)


def _direct_routes(app: Flask) -> dict[str, tuple[WebSocket, Rule]]:
    """The paths whose handshakes Flask would dispatch to an endpoint's view and
    nothing else, with the endpoint and rule.

    Made once: the app is marked as serving, as Flask's dispatch would, so that its
    routes and hooks can no longer change (Flask refuses setup methods from then on).
    """
    mark_serving(app)
    url_map = app.url_map
    if url_map.host_matching or app.subdomain_matching or app.config.get("SERVER_NAME"):
        return {}
    if app.teardown_appcontext_funcs:
        return {}
    by_path: dict[str, list[Rule]] = {}
    for rule in url_map.iter_rules():
        if rule.websocket:
            by_path.setdefault(rule.rule, []).append(rule)
    routes = {}
    for path, rules in by_path.items():
        rule = rules[0]
        view = app.view_functions.get(rule.endpoint)
        endpoint = getattr(view, "__self__", None)
        if (
            len(rules) == 1  # else Flask's matching decides
            and isinstance(endpoint, WebSocket)
            and getattr(view, "__func__", None) is WebSocket._view  # no decorators
            and not rule.arguments
            and not rule.defaults
            and not rule.host
            and not rule.subdomain
            and rule.redirect_to is None
            and not _hooked(app, rule.endpoint)
        ):
            routes[path] = (endpoint, rule)
    return routes


def _hooked(app: Flask, endpoint: str) -> bool:
    """Whether a request to ``endpoint`` has hooks to run (the app's or its blueprints')."""
    blueprint = endpoint.rpartition(".")[0]
    parts = blueprint.split(".") if blueprint else []
    names = [None, *(".".join(parts[: i + 1]) for i in range(len(parts)))]
    return any(getattr(app, hooks).get(name) for hooks in _REQUEST_HOOKS for name in names)


def _websocket_mismatch(error: WebsocketMismatch) -> Response:
    """A handshake to an HTTP-only path is a 404; a plain request to a WebSocket-only path, 426."""
    if is_upgrade_request(request.environ):
        return Response("no WebSocket endpoint at this URL\n", 404, mimetype="text/plain")
    return Response(
        "this URL only serves WebSocket connections\n",
        426,
        [("Upgrade", "websocket"), ("Connection", "Upgrade")],
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
        decorators: view decorators applied to the endpoint, innermost first (as in
            Flask's class-based views); they run before the handshake and may refuse it
            by returning or raising an HTTP error.
        broker: what carries sends to the clients of other processes and hosts: a
            :class:`~geo_ws.delivery.broker.Broker` or a URL (``redis://...``). Default: the
            app's ``GEO_WS_BROKER_URL`` config, else the ``GEO_WS_BROKER_URL``
            environment variable, else one process only (see :mod:`geo_ws.delivery.broker`).
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
        decorators: Sequence[Callable[[Callable[..., Any]], Callable[..., Any]]] = (),
        broker: Broker | str | None = None,
    ) -> None:
        self._explicit = {
            name: value
            for name, value in locals().items()
            if name in Options.names() and value is not UNSET
        }
        Options.resolve(self._explicit, {})  # fail now on a bad value, not at a handshake
        self._options: WeakKeyDictionary[Flask, Options] = WeakKeyDictionary()
        self._broker_option = broker
        self.path = path
        """The URL rule of the endpoint."""
        self.router_dependencies: dict[str, Any] = {}
        """What :meth:`inject` fed; handlers get it as ``router_dependencies``."""
        self._handlers: dict[str, _Handler] = {}
        self._global_injections: dict[str, Any] = {}
        self._apps: list[Flask] = []
        view: Callable[..., Any] = self._view
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
        state = _app_state(app)
        # Other processes know the endpoint by its full rule, as Flask joins it.
        key = "/".join((url_prefix.rstrip("/"), self.path.lstrip("/"))) if url_prefix else self.path
        state.registries[self] = Registry(key)
        state.global_dependencies.update(self._global_injections)
        app.register_error_handler(WebsocketMismatch, _websocket_mismatch)
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
            self._handlers[event] = _Handler(fn, params)
            return fn

        return decorator

    def inject(self, **dependencies: Any) -> None:
        """Add to ``router_dependencies``, seen by this endpoint's handlers."""
        self.router_dependencies.update(dependencies)

    def inject_global(self, **dependencies: Any) -> None:
        """Add to ``global_dependencies``, shared by every endpoint of the app."""
        self._global_injections.update(dependencies)
        for app in self._apps:
            _app_state(app).global_dependencies.update(dependencies)

    # -- sending from anywhere ---------------------------------------------------------

    def _registry(self) -> Registry:
        """This endpoint's registry in the current app, or in its only app."""
        return self._state().registries[self]

    def _state(self) -> _AppState:
        """geo_ws's state in the current app, or in this endpoint's only app."""
        if has_app_context():
            state: _AppState | None = current_app.extensions.get("geo_ws")
            if state is not None and self in state.registries:
                return state
        if len(self._apps) == 1:
            return _app_state(self._apps[0])
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

    def _view(self, **path_params: Any) -> Response:
        """The Flask view: handshake, take the socket over, run the connection."""
        app: Flask = current_object(current_app)
        try:
            connector = self._open(app, request.environ, path_params)
        except HandshakeError as error:
            return Response(error.reason + "\n", error.status, error.headers, mimetype="text/plain")
        if connector is None:
            logger.error("%s: this WSGI server cannot hand a socket over", request.path)
            return Response(
                "this server cannot upgrade to WebSocket: serve the app with geo-ws run, "
                "geo_ws.run() or gunicorn -k gevent\n",
                500,
                mimetype="text/plain",
            )
        connector._run()
        return _EndOfSocket(connector._transport)

    def _serve_direct(self, app: Flask, rule: Rule, environ: dict[str, Any]) -> bool:
        """Serve a handshake that Flask's dispatch would only have passed to :meth:`_view`
        (see :func:`direct_lane`), without it.

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
        subprotocol = select_subprotocol(environ, options.subprotocols)
        negotiated = None
        if options.compression is not None:
            offers = environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS", "")
            negotiated = negotiate(offers, options.compression)
        transport = take_over(environ)
        if transport is None:
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
        headers = [("Sec-WebSocket-Protocol", subprotocol)] if subprotocol else []
        if negotiated:
            headers.append(("Sec-WebSocket-Extensions", negotiated[0]))
        if not transport.upgraded:  # else the server has sent its own 101
            connection.send_handshake(response_101(key, headers))
        return connector


class _EndOfSocket(Response):
    """What the view returns once the socket is done: ends the WSGI call quietly."""

    def __init__(self, transport: Transport) -> None:
        # A content type, however empty, spares Werkzeug its look-up of one in the
        # headers (an exception raised and caught per handshake); nothing is sent.
        super().__init__(content_type="")
        self._transport = transport

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self._transport.end_response(start_response)


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
        self._environ = environ
        self._endpoint = endpoint
        self._app = app
        self._state = state = _app_state(app)
        self._registry = state.registries[endpoint]
        self._connection = connection
        self._transport = transport
        self._parking = False
        # receive() saw this client's connection end: a handler's ConnectionClosed then
        # is that ending, not the handler's failure.
        self._ended_in_receive = False
        # The request context this connection holds past the view (popped at _end), and
        # the greenlet context that holds it.
        self._request_context: RequestContext | None = None
        self._context: contextvars.Context | None = None
        # Served without Flask's dispatch (direct_lane): the rule matched, until the
        # request context is made for the first handler.
        self._direct = direct
        if direct is not None:
            self._context = contextvars.Context()

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
        self._registry.remove(self.id)

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
        try:
            return self._connection.receive_or_closed(timeout)
        except ConnectionClosed:
            self._ended_in_receive = True
            raise

    # -- rooms -------------------------------------------------------------------------

    def join(self, room: str) -> None:
        """Put this client in ``room``: it gets ``sync_broadcast(data, room=room)`` sent
        from any process. It leaves its rooms when it closes."""
        self._registry.join(self.id, room)

    def leave(self, room: str) -> None:
        """Take this client out of ``room`` (a no-op if it is not in it)."""
        self._registry.leave(self.id, room)

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this client is in."""
        return self._registry.rooms_of(self.id)

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
        self._broker.listen()  # from now on, sends from other processes arrive here
        self._registry.add(self.id, connection)
        self._serve(connect=True)

    def _serve(self, connect: bool = False) -> None:
        """Handle what has come; park when nothing more has; once closed, run the
        close handler (exactly once) and close."""
        connection = self._connection
        try:
            if connect:
                self._dispatch("connect", "")
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
            self._registry.remove(self.id)
            self._dispatch("close", "", deliver=False)
            connection.abort()
            self._end()
            raise
        self._registry.remove(self.id)
        request_ = connection.close_request
        self._dispatch("close", "", deliver=connection.can_send and not (request_ and request_[2]))
        # A failing close handler turns a clean local close into 1011.
        request_ = connection.close_request
        if request_ is not None:
            connection.close(request_[0], request_[1])
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

    def _push(self, context: RequestContext) -> None:
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
        try:
            if self._direct is not None:
                self._enter_request(self._direct)
            result = handler.fn(**{name: self._inject(name, message) for name in handler.params})
            if inspect.isawaitable(result):
                result = run_coroutine(result)
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
        self._connection.send(result)
