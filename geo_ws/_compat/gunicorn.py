"""What geo_ws's worker takes from gunicorn's internals.

gunicorn documents its worker classes and settings, not the pieces its gevent worker
is built of; these are those pieces. Tested on gunicorn 23.0.0 to 27.0.1.
"""

from __future__ import annotations

from typing import Any

from gunicorn.http.wsgi import base_environ
from gunicorn.sock import ssl_context
from gunicorn.workers.ggevent import VERSION, GeventResponse, GeventWorker, PyWSGIHandler

__all__ = [
    "VERSION",
    "GeventWorker",
    "PyWSGIHandler",
    "access_log_enabled",
    "access_response",
    "base_environ",
    "ssl_context",
]


def access_log_enabled(log: Any) -> bool:
    """Whether gunicorn's logger writes access lines (``access_log_enabled``: gunicorn
    26 on; earlier versions decide inside ``access()``, so: yes)."""
    return bool(getattr(log, "access_log_enabled", True))


def access_response(status: str, headers: list[tuple[str, str]], length: int) -> Any:
    """The response object gunicorn's ``Logger.access`` reads status, headers and length
    from (gunicorn's gevent worker builds one per request)."""
    return GeventResponse(status, headers, length)
