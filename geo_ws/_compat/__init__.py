"""The one door to other libraries' private internals.

Every use of a private name of gevent, pywsgi, gunicorn, gevent-websocket, Flask or
asyncio lives here, each behind a hook named after what it does, with the versions it
was tested on and the public fallback it takes where one exists. Nothing else in
geo_ws touches such a name: ``tests/test_compat.py`` checks it. When a release
changes one, this package is the only place to look.

One module per library; each imports its library only, so a layer uses the hooks of
the libraries it already depends on.
"""
