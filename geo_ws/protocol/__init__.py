"""The WebSocket protocol without I/O: frames, the connection state machine, both sides of
the handshake, permessage-deflate and the broker envelope. Imports no gevent, no Flask
and no other layer of geo_ws.
"""
