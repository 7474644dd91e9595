"""``python -m geo_ws run module:app``: the same as the ``geo-ws`` command."""

from geo_ws.cli import main

main()
