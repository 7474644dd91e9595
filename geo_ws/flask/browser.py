"""The browser client, ``geo_ws.js``, served by the app: a Blueprint.

``geo_ws.js`` is an ES module with no build step (it ships with the package, under
``geo_ws/flask/static/``): a page imports it from the app that serves its WebSockets::

    from geo_ws import browser_client
    app.register_blueprint(browser_client)       # GeoWS(app) registers it too

.. code-block:: html

    <script type="module">
      import { GeoSocket } from "/geo_ws/geo_ws.js";   // {{ url_for("geo_ws_client.script") }}
      const socket = new GeoSocket("/chat/ws");
    </script>

It answers with ``text/javascript`` (RFC 9239), an ETag, and a cache lifetime of an hour:
browsers revalidate after a deploy that upgrades geo_ws, and never fetch it twice per page.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.resources import files

from flask import Blueprint, Response, request

__all__ = ["BLUEPRINT_NAME", "CACHE_SECONDS", "browser_client", "script_source"]

BLUEPRINT_NAME = "geo_ws_client"
"""The Blueprint's name: ``url_for("geo_ws_client.script")`` is the module's URL."""
CACHE_SECONDS = 3600
"""How long browsers and proxies may use the module without asking again."""

browser_client = Blueprint(BLUEPRINT_NAME, __name__, url_prefix="/geo_ws")
"""Serves ``GET /geo_ws/geo_ws.js`` (under the prefix it is registered with)."""


@cache
def script_source() -> bytes:
    """The source of ``geo_ws.js``, read once from the installed package."""
    return files(__package__).joinpath("static", "geo_ws.js").read_bytes()


@browser_client.get("/geo_ws.js")
def script() -> Response:
    """The module, cacheable, with a content ETag (304 to a matching ``If-None-Match``)."""
    source = script_source()
    response = Response(source, mimetype="text/javascript")
    response.set_etag(hashlib.sha256(source).hexdigest()[:32])
    response.cache_control.public = True
    response.cache_control.max_age = CACHE_SECONDS
    response.make_conditional(request)  # in place: 304 and no body on a match
    return response
