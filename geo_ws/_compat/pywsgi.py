"""Hooks into gevent's WSGI server (``gevent.pywsgi`` and ``gevent.baseserver``).

Tested on gevent 24.10 to 26.9.
"""

from __future__ import annotations

from typing import Any

from gevent.pywsgi import WSGIHandler, WSGIServer

__all__ = [
    "HandlerHooks",
    "handle_accepted",
    "mark_response_started",
    "no_request_body_left",
    "use_pool_capacity_as_given",
]


class HandlerHooks(WSGIHandler):
    """pywsgi's request handler with its bad-request hook made overridable by name.

    pywsgi answers a request it cannot parse through its private
    ``_handle_client_error``; subclasses override :meth:`client_error_response`.
    """

    def client_error_response(self, error: BaseException) -> tuple[str, bytes] | None:
        """The ``(status, body)`` to answer a bad request with, or ``None`` for pywsgi's."""
        return None

    def _handle_client_error(self, ex: BaseException) -> Any:
        answer = self.client_error_response(ex)
        if answer is not None:
            return answer
        return super()._handle_client_error(ex)  # type: ignore[misc]


def no_request_body_left(handler: WSGIHandler) -> None:
    """Tell ``handler`` that its request has no body left to discard.

    After a WebSocket takes the socket, pywsgi would read what remains of the request
    body (its ``wsgi_input``) off a socket that is no longer its own.
    """
    if handler.wsgi_input is not None:
        handler.wsgi_input.content_length = 0
        handler.wsgi_input.chunked_input = False


def mark_response_started(handler: WSGIHandler) -> None:
    """Tell ``handler`` that its response's head went out (a 101 written directly), so
    it writes none of its own."""
    handler.headers_sent = True


def use_pool_capacity_as_given(server: WSGIServer) -> None:
    """Drop the ``full()`` that gevent's server copies from its pool at construction.

    gevent binds the pool's ``full`` on the instance; without it the server's own
    :meth:`full` (which counts parked WebSockets) is the one consulted.
    """
    server.__dict__.pop("full", None)


def handle_accepted(server: WSGIServer, *args: Any) -> None:
    """Run ``server``'s handling of an accepted client: ``handle()``, or its TLS wrapper.

    gevent's accept loop calls the private ``_handle``, which a TLS server sets to the
    wrapper that does the TLS handshake first; a public ``handle()`` would skip it.
    """
    server._handle(*args)  # type: ignore[attr-defined]
