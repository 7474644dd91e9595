"""Close 1001 at shutdown under gunicorn's own gevent workers: the implementation behind
:mod:`geo_ws.gunicorn_hooks`.
"""

from __future__ import annotations

from typing import Any

import gevent

from .metrics import note_workers
from .wsgi import FOREIGN_CONNECTIONS

__all__ = ["post_worker_init"]

#: Seconds between two looks at whether the worker was told to stop (gunicorn's own
#: loop looks once a second).
WATCH_INTERVAL = 0.2


def post_worker_init(worker: Any) -> None:
    """gunicorn's server hook, run in each worker once the app is loaded: watch for
    the worker's stop, then close this process's WebSockets with 1001."""
    note_workers(worker.cfg.workers)  # the metrics need a multiprocess dir if several
    gevent.spawn(_close_on_stop, worker)


def _close_on_stop(worker: Any) -> None:
    # A signal handler sets worker.alive; gunicorn's run loop polls it the same way.
    while worker.alive:
        gevent.sleep(WATCH_INTERVAL)
    for connection in list(FOREIGN_CONNECTIONS):
        connection.request_close(1001, "server shutting down")
