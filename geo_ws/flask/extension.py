"""The Flask extension pattern: ``GeoWS(app)`` or ``geo.init_app(app)``.

Endpoints work without it; it gives an app factory one place to set geo_ws up: the
``GEO_WS_*`` config keys with their defaults filled in (so ``app.config`` shows what is
in force), the browser client (``/geo_ws/geo_ws.js``) and a ``flask geo-ws run`` command.
"""

from __future__ import annotations

from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from .._compat.flask import current_object
from ..io.options import Options
from .browser import BLUEPRINT_NAME, browser_client
from .metrics import install as install_metrics

__all__ = ["GeoWS", "cli"]

cli = AppGroup("geo-ws", help="geo_ws: serve this app's HTTP routes and WebSockets.")


@cli.command("run")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port to listen on (0: any).")
@click.option("--graceful-timeout", default=10.0, show_default=True, help="Seconds for shutdown.")
def run_command(host: str, port: int, graceful_timeout: float) -> None:
    """Serve the app with geo_ws's server (monkey-patches first).

    ``flask`` imports the app before this runs, so modules the app imported keep any
    unpatched references: ``geo-ws run module:app`` patches before importing and is
    preferred.
    """
    from gevent import monkey

    monkey.patch_all()
    from ..server.builtin import run

    run(current_object(current_app), host, port, graceful_timeout=graceful_timeout)


class GeoWS:
    """geo_ws as a Flask extension.

    .. code-block:: python

        geo = GeoWS()

        def create_app():
            app = Flask(__name__)
            app.config["GEO_WS_PING_INTERVAL"] = 10
            geo.init_app(app)
            return app

    Args:
        app: the app to set up now, or ``None`` to call :meth:`init_app` later.
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Fill in the ``GEO_WS_*`` config defaults, serve geo_ws.js, add ``flask geo-ws run``,
        and serve the metrics at ``GEO_WS_METRICS_PATH`` if it is set (see
        :mod:`geo_ws.flask.metrics`).

        The browser client is :data:`geo_ws.browser_client` (``/geo_ws/geo_ws.js``),
        registered unless the app has it already.
        """
        for name, default in zip(Options.names(), Options.defaults(), strict=True):
            app.config.setdefault("GEO_WS_" + name.upper(), default)
        app.extensions.setdefault("geo_ws_extension", self)
        app.cli.add_command(cli)
        if BLUEPRINT_NAME not in app.blueprints:
            app.register_blueprint(browser_client)
        install_metrics(app)

    def run(self, app: Flask, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
        """Serve ``app`` with :func:`geo_ws.run` (the process must be monkey-patched)."""
        from ..server.builtin import run

        run(app, host, port, **options)
