"""Hooks into Flask's and Werkzeug's internals, for the Flask glue.

Tested on Flask 3.1.0 to 3.1.3 (Werkzeug 3.1), and on Flask's development branch
(3.2, where ``RequestContext`` merged into ``AppContext`` and ``request_ctx`` into
``app_ctx``: both old names warn there, so neither is touched on a version that has
the merged context).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Flask
from flask.ctx import AppContext

if TYPE_CHECKING:
    # The context that holds a request, for annotations: Flask 3.1's RequestContext,
    # 3.2's AppContext (where RequestContext is a deprecated alias of it).
    from flask.ctx import RequestContext as RequestScope

__all__ = [
    "CONTEXT_HOLDS_REQUEST",
    "current_object",
    "current_request_context",
    "mark_serving",
    "push_without_matching",
]
if TYPE_CHECKING:
    __all__ += ["RequestScope"]

#: Flask 3.2 on: one context type holds the app and the request.
CONTEXT_HOLDS_REQUEST = hasattr(AppContext, "request")


def current_object(proxy: Any) -> Any:
    """The object behind a Werkzeug ``LocalProxy`` such as ``current_app``.

    ``_get_current_object`` is the way Werkzeug's and Flask's documentation give
    ("Accessing the Proxied Object"), despite its underscore.
    """
    return proxy._get_current_object()


def current_request_context() -> RequestScope:
    """The active context holding the current request, to be pushed again later."""
    if CONTEXT_HOLDS_REQUEST:
        from flask.globals import app_ctx

        return current_object(app_ctx)  # type: ignore[no-any-return]
    from flask.globals import request_ctx

    return current_object(request_ctx)  # type: ignore[no-any-return]


def push_without_matching(context: RequestScope) -> None:
    """Push a request context without matching its URL again: the rule matched stands.

    Pushing a request context matches the request's URL when the context has a URL
    adapter (both ``RequestContext.push`` up to 3.1 and ``AppContext.push`` in 3.2),
    which would replace ``request.url_rule`` and cost a routing pass per wake-up.
    """
    adapter, context.url_adapter = context.url_adapter, None
    try:
        context.push()
    finally:
        context.url_adapter = adapter


def mark_serving(app: Flask) -> None:
    """Mark ``app`` as having served a request, as Flask's dispatch does at its first
    request: setup methods (``add_url_rule``, ``before_request``, ...) are refused from
    then on, so routes that geo_ws read once cannot change behind it.

    Flask sets the private ``_got_first_request`` in ``wsgi_app``; there is no public
    setter.
    """
    app._got_first_request = True
