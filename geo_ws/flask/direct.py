"""Handshakes that skip Flask's dispatch when the app could not tell the difference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from flask import Flask, Request, signals
from flask.sessions import SecureCookieSessionInterface
from werkzeug.routing import Rule

from .._compat.flask import mark_serving
from .appstate import AppState

__all__ = ["DirectEndpoint", "direct_lane", "direct_routes"]


@runtime_checkable
class DirectEndpoint(Protocol):
    """An endpoint whose view the direct lane may stand in for (:class:`WebSocket`)."""

    def view(self, **path_params: Any) -> Any:
        """The Flask view of the endpoint."""

    def serve_direct(self, app: Flask, rule: Rule, environ: dict[str, Any]) -> bool:
        """Serve a handshake without Flask's dispatch; ``False``: Flask must dispatch it."""


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
        state: AppState | None = app.extensions.get("geo_ws")
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
            routes = state.direct = direct_routes(app)
        route = routes.get(environ["PATH_INFO"])
        return route is not None and route[0].serve_direct(app, route[1], environ)

    return serve


def direct_routes(app: Flask) -> dict[str, tuple[DirectEndpoint, Rule]]:
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
            and isinstance(endpoint, DirectEndpoint)
            and getattr(view, "__func__", None) is type(endpoint).view  # no decorators
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
