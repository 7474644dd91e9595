"""Where an app serves its metrics: GEO_WS_METRICS_PATH, the extension, the blueprint;
and the 500 that says what is missing under several workers.

(geo_ws.flask.metrics; what the numbers are: tests/server/test_metrics.py)
"""

from __future__ import annotations

import uuid

import pytest
from flask import Flask

from geo_ws import GeoWS, WebSocket
from geo_ws.flask.metrics import metrics_blueprint
from geo_ws.server import metrics

from ..helpers import RawClient, http_get


def echo_app(path: str) -> Flask:
    app = Flask(__name__)
    WebSocket(app, path).on("message")(lambda msg: msg)
    return app


def open_connections(body: str, path: str) -> str | None:
    """The value of geo_ws_open_connections for ``path`` in a scrape, if it is there."""
    for line in body.splitlines():
        if line.startswith(f'geo_ws_open_connections{{endpoint="{path}"}}'):
            return line.rsplit(" ", 1)[1]
    return None


def test_without_a_metrics_path_there_is_no_route_and_nothing_counts(serve) -> None:
    path = f"/{uuid.uuid4().hex[:8]}"
    app = echo_app(path)
    address = serve(app)
    client = RawClient(address, path)
    client.send_text("hi")
    assert client.recv() == "hi"
    assert http_get(address, "/metrics")[0] == 404
    assert "geo_ws_metrics" not in app.extensions


def test_the_extension_serves_the_metrics_path_set_before_init_app(serve) -> None:
    path = f"/{uuid.uuid4().hex[:8]}"
    app = echo_app(path)
    app.config["GEO_WS_METRICS_PATH"] = "/internal/metrics"
    GeoWS(app)
    address = serve(app)
    client = RawClient(address, path)
    client.send_text("hi")
    assert client.recv() == "hi"
    status, body = http_get(address, "/internal/metrics")
    assert status == 200
    assert open_connections(body, path) == "1.0"
    assert http_get(address, "/metrics")[0] == 404


def test_the_blueprint_serves_the_metrics_below_its_prefix(serve) -> None:
    path = f"/{uuid.uuid4().hex[:8]}"
    app = echo_app(path)
    app.register_blueprint(metrics_blueprint(), url_prefix="/ops")
    address = serve(app)
    clients = [RawClient(address, path) for _ in range(3)]
    for client in clients:
        client.send_text("hi")
        assert client.recv() == "hi"
    status, body = http_get(address, "/ops/metrics")
    assert status == 200
    assert open_connections(body, path) == "3.0"
    assert f'geo_ws_messages_received_total{{endpoint="{path}"}} 3.0' in body


def test_several_workers_without_a_multiprocess_dir_get_a_500_that_says_so(
    serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = echo_app(f"/{uuid.uuid4().hex[:8]}")
    app.config["GEO_WS_METRICS_PATH"] = "/metrics"
    GeoWS(app)
    address = serve(app)
    monkeypatch.setattr(metrics, "_workers", 3)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    status, body = http_get(address, "/metrics")
    assert status == 500
    assert "3 workers, but PROMETHEUS_MULTIPROC_DIR is not set" in body
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent/geo_ws-metrics")
    status, body = http_get(address, "/metrics")
    assert status == 500
    assert "is not a directory" in body
