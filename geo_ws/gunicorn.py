"""geo_ws's gunicorn worker: ``gunicorn -k geo_ws.gunicorn.Worker -w 4 app:app``.

The recommended way to run geo_ws under gunicorn (``pip install geo_ws[gunicorn]``).
Like gunicorn's ``-k gevent`` worker it monkey-patches the process before loading the
app; unlike it, it serves HTTP and WebSockets with geo_ws's own server
(:mod:`geo_ws.server.builtin`), and it ends WebSockets properly: on SIGTERM (``kill`` of the
master, or a SIGHUP reload, which stops the old workers with SIGTERM) every
WebSocket gets a Close 1001, close handlers run, and the worker waits for the
closing handshakes within ``--graceful-timeout`` before it exits. On SIGINT/SIGQUIT
(gunicorn's quick shutdown) WebSockets are sent Close 1001 too, without the wait.

Handlers that block in patched I/O (``time.sleep``, sockets, database drivers on
sockets) never trip ``--timeout``: the worker reports to the master from its own
greenlet. Only a call that blocks the whole process (unpatched C code) can; move
those to :func:`geo_ws.run_blocking`.

Logging: unless the app configured the ``geo_ws`` logger itself, its records go to
gunicorn's error log, at gunicorn's ``--log-level``.
"""

from .server.gunicorn import Worker

__all__ = ["Worker"]
