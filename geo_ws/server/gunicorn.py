"""geo_ws's server as a gunicorn worker: the implementation behind :mod:`geo_ws.gunicorn`."""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
from datetime import timedelta
from typing import Any

import gevent
from gevent.event import Event
from gevent.pool import Pool

from .._compat.gunicorn import (
    VERSION,
    GeventWorker,
    PyWSGIHandler,
    access_log_enabled,
    access_response,
    base_environ,
    ssl_context,
)
from ..delivery.broker import flush_all, get_broker
from .builtin import Handler, Server
from .http import log_safe
from .metrics import forget_process, note_workers
from .process import settle_process
from .quick import QuickHandshake

__all__ = ["Worker"]

#: Seconds of ``--graceful-timeout`` kept back for what follows the WebSockets'
#: closing handshakes (publishing their close handlers' messages, exiting).
MARGIN = 1.0


def _log_access(
    log: Any, status: str, headers: list[Any], length: int, environ: dict[str, Any], started: float
) -> None:
    """Write a request's line in gunicorn's access log, escaping what the client sent.

    gunicorn escapes only double quotes: a CR or LF in a header would start a forged line.
    """
    if not access_log_enabled(log):
        return  # before the arguments are made
    safe = {
        key: log_safe(value) if isinstance(value, str) else value for key, value in environ.items()
    }
    # The request's headers as gunicorn's format sees them: "%({user-agent}i)s".
    request_headers = [
        (key[5:].replace("_", "-"), value) for key, value in safe.items() if key.startswith("HTTP_")
    ]
    response = access_response(status, headers, length)
    log.access(response, request_headers, safe, timedelta(seconds=time.time() - started))


class _Handler(Handler, PyWSGIHandler):  # type: ignore[misc]
    """geo_ws's request handler, writing gunicorn's access log."""

    def log_request(self) -> None:
        if self.environ is None:
            return  # a head refused before it was parsed: as gunicorn, no access log line
        status = self.status or "000"
        _log_access(
            self.server.log,
            status.decode("latin-1") if isinstance(status, bytes) else status,
            # None for a WebSocket: its 101 went out directly.
            self.response_headers or [],
            self.response_length,
            self.environ,
            self.time_start,
        )


class _Server(Server):
    """geo_ws's server with what gunicorn adds to each request: its environ keys and
    its access log, for handshakes on the quick path too."""

    def _complete_quick_environ(
        self, environ: dict[str, Any], sock: socket.socket, target: str
    ) -> None:
        environ["gunicorn.sock"] = sock
        environ["RAW_URI"] = target

    def _log_quick_request(
        self, handshake: QuickHandshake, status: str, length: int, started: float
    ) -> None:
        _log_access(self.log, status, [], length, handshake.environ, started)


class Worker(GeventWorker):  # type: ignore[misc]
    """A gunicorn worker serving HTTP and WebSocket with geo_ws's server.

    Use it with ``-k geo_ws.gunicorn.Worker`` (or ``worker_class`` in a config
    file). It honours ``--worker-connections``, ``--graceful-timeout``,
    ``--keepalive`` (also the time a client may take to send a request head), TLS
    options and ``--timeout``.
    """

    wsgi_handler = _Handler

    _serving: list[Server]
    _stopping: Event | None = None

    def init_process(self) -> None:
        """Route geo_ws's log to gunicorn's, then patch, load the app and run."""
        geo_ws_logger = logging.getLogger("geo_ws")
        if not geo_ws_logger.handlers:
            error_log = self.log.error_log
            for handler in error_log.handlers:
                geo_ws_logger.addHandler(handler)
            geo_ws_logger.setLevel(error_log.level)
            geo_ws_logger.propagate = False
        note_workers(self.cfg.workers)  # the metrics need a multiprocess dir if several
        # GeventWorker patches first, then reinitialises the hub, then loads the app.
        super().init_process()

    def run(self) -> None:
        """Serve until told to stop, then close every WebSocket with 1001."""
        settle_process()  # the app is loaded: what exists now lives as long as the worker
        self._subscribe()
        self._stopping = Event()
        self._serving = []
        ssl_args = {"ssl_context": ssl_context(self.cfg)} if self.cfg.is_ssl else {}
        for listener in self.sockets:
            listener.setblocking(1)
            environ = base_environ(self.cfg)
            environ.update({"wsgi.multithread": True, "SERVER_SOFTWARE": VERSION})
            server = _Server(
                listener,
                self.wsgi,
                handshake_timeout=self.cfg.keepalive or 10.0,
                spawn=Pool(self.worker_connections),
                log=self.log,
                error_log=self.log,
                handler_class=_Handler,
                environ=environ,
                **ssl_args,
            )
            if self.cfg.workers > 1:
                # Accept one connection per wake-up, so that the workers share them.
                server.max_accept = 1
            server.start()
            self._serving.append(server)
            self.log.info("geo_ws serving on %s (worker pid %s)", _url(listener), self.pid)
        while self.alive:
            self.notify()
            self._stopping.wait(self._notify_interval())
        self._shutdown()
        # Frozen objects outlive the modules at exit: their finalizers (logging's weak
        # references) would then fail noisily. Let the exit finalize them in order.
        gc.unfreeze()

    def _subscribe(self) -> None:
        """Subscribe to the environment's broker before accepting anything, so that no
        handshake waits for it (endpoints configured otherwise subscribe on their first)."""
        url = os.environ.get("GEO_WS_BROKER_URL")
        if url:
            try:
                get_broker(url).listen()
            except ValueError:
                pass  # a URL no broker takes: the endpoints say so when they use it

    def _notify_interval(self) -> float:
        # self.timeout is half of --timeout already; 0 means no timeout.
        return min(1.0, self.timeout) if self.timeout > 0 else 1.0

    def _keep_notifying(self) -> None:
        while True:
            self.notify()
            gevent.sleep(self._notify_interval())

    def _shutdown(self) -> None:
        """Close every WebSocket with 1001 and wait, within ``--graceful-timeout``."""
        # The master takes a worker that stops reporting for a hung one.
        notifier = gevent.spawn(self._keep_notifying)
        try:
            count = sum(len(server.connections) for server in self._serving)
            self.log.info(
                "geo_ws worker %s shutting down: closing %d WebSocket(s)", self.pid, count
            )
            timeout = max(0.1, self.cfg.graceful_timeout - MARGIN)
            gevent.joinall(
                [gevent.spawn(server.shutdown, timeout) for server in self._serving],
                timeout=timeout + 1,
            )
            # Close handlers may have broadcast (a chat's "left"): publish before exiting.
            flush_all(MARGIN / 2)
        finally:
            notifier.kill(block=False)
            forget_process()  # this worker's connections leave the metrics' gauges

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: stop serving, gracefully."""
        super().handle_exit(sig, frame)
        if self._stopping is not None:
            # A signal handler may run inside the hub: wake run() through the loop.
            gevent.get_hub().loop.run_callback_threadsafe(self._stopping.set)

    def handle_quit(self, sig: int, frame: Any) -> None:
        """SIGINT/SIGQUIT: gunicorn exits within 0.1 s; send Close 1001 meanwhile."""
        gevent.get_hub().loop.run_callback_threadsafe(self._close_all)
        super().handle_quit(sig, frame)

    def _close_all(self) -> None:
        for server in getattr(self, "_serving", ()):
            for connection in list(server.connections):
                connection.request_close(1001, "server shutting down")


def _url(listener: socket.socket) -> str:
    address = listener.getsockname()
    if isinstance(address, tuple):
        return f"http://{address[0]}:{address[1]}"
    return f"unix:{address}"
