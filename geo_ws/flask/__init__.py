"""The Flask glue: Robyn's ``WebSocket(app, path)`` API, endpoints, the extension and its
CLI. The only part of geo_ws that imports Flask or click.
"""
