"""Close 1001 at shutdown under gunicorn's own gevent workers: a config module.

gunicorn's ``-k gevent``, ``-k gevent_pywsgi`` and gevent-websocket's worker know
nothing of WebSockets: on SIGTERM (or a SIGHUP reload) they keep them open until
``--graceful-timeout`` runs out, then drop them without a Close frame (clients see
1006, 30 s late). With this module as gunicorn's config, each WebSocket gets Close
1001 as soon as its worker is told to stop, the close handlers run, and the worker
exits once the closing handshakes are done::

    gunicorn -c python:geo_ws.gunicorn_hooks -k gevent app:app

or, in a config file of one's own::

    from geo_ws.gunicorn_hooks import post_worker_init

geo_ws's own worker (``-k geo_ws.gunicorn.Worker``) does this without it. This module
defines nothing but the hook: gunicorn reads every setting a config module defines.
"""

from .server.gunicorn_hooks import post_worker_init

__all__ = ["post_worker_init"]
