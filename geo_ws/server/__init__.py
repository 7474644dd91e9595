"""Serving: taking sockets over from WSGI servers, the built-in server, gunicorn workers
and hooks, gevent-websocket compatibility.
"""
