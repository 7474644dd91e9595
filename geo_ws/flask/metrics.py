"""Prometheus metrics of an app's WebSocket endpoints, at a path of the app.

Set ``GEO_WS_METRICS_PATH`` (e.g. ``"/metrics"``) in the app's config before its
endpoints are made, or before :meth:`GeoWS.init_app <geo_ws.flask.extension.GeoWS.init_app>`;
or register the blueprint, at a path of your choosing::

    app.register_blueprint(metrics_blueprint(), url_prefix="/internal")  # /internal/metrics

Either way the app's endpoints count from then on (``pip install geo_ws[metrics]``);
the metrics and what to set under gunicorn: docs/deployment.md, "Metrics".
"""

from __future__ import annotations

from typing import cast

from flask import Blueprint, Flask, Response

from ..server.metrics import EndpointMeter, MetricsConfigError, process_metrics

__all__ = ["enable", "metrics_blueprint", "metrics_view"]

_KEY = "geo_ws_metrics"


def install(app: Flask) -> None:
    """Count ``app``'s endpoints, and serve the metrics at ``GEO_WS_METRICS_PATH`` if
    it is set (idempotent; nothing when it is unset)."""
    path = app.config.get("GEO_WS_METRICS_PATH")
    if path and "geo_ws_metrics_path" not in app.extensions:
        enable(app)
        app.add_url_rule(path, "geo_ws_metrics", metrics_view, methods=["GET"])
        app.extensions["geo_ws_metrics_path"] = path


def enable(app: Flask) -> None:
    """Count ``app``'s endpoints (without serving the metrics).

    Raises:
        ImportError: prometheus_client is not installed.
    """
    app.extensions[_KEY] = process_metrics()


def metrics_blueprint(name: str = "geo_ws_metrics", path: str = "/metrics") -> Blueprint:
    """A blueprint that serves the metrics at ``path`` (below its ``url_prefix``) and
    makes the endpoints of the app it is registered on count.

    Args:
        name: the blueprint's name.
        path: its one route.
    """
    blueprint = Blueprint(name, __name__)
    blueprint.add_url_rule(path, "metrics", metrics_view, methods=["GET"])
    blueprint.record_once(lambda setup: enable(cast(Flask, setup.app)))
    return blueprint


def metrics_view() -> Response:
    """Every worker's metrics in Prometheus' text format; 500 with the reason when they
    cannot be right (several workers without a multiprocess directory)."""
    try:
        body, content_type = process_metrics().exposition()
    except MetricsConfigError as error:
        return Response(f"{error}\n", 500, mimetype="text/plain")
    return Response(body, content_type=content_type)


def meter_of(app: Flask, key: str) -> EndpointMeter | None:
    """The meter of the endpoint named ``key`` in ``app``, or ``None`` when ``app``
    does not count."""
    metrics = app.extensions.get(_KEY)
    return None if metrics is None else metrics.meter(key)
