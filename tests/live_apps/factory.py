"""An app factory with the GeoWS extension: ``flask --app tests.live_apps.factory geo-ws run``."""

from flask import Flask

from geo_ws import GeoWS, WebSocket

geo = GeoWS()


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["GEO_WS_MAX_MESSAGE_SIZE"] = 100
    geo.init_app(app)
    echo = WebSocket(app, "/echo")
    echo.on("message")(lambda msg: msg)
    return app
