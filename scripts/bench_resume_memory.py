"""Server memory per idle resumable connection, next to a plain one.

    python scripts/bench_resume_memory.py [-n 2000]

Starts this script's own app (``--serve PORT``) in a subprocess per configuration:
``/plain`` without recovery, ``/resume`` with ``recovery=True`` (the in-memory default;
set ``GEO_WS_BROKER_URL`` to measure with Redis, where sessions live in Redis). Opens N
connections, resuming ones offering ``geo_ws.resume.1`` and starting a session, reads
the server's RSS before and after, and prints KiB per idle connection.
Loopback only; every connection is closed at the end. Needs a quiet machine for figures
worth quoting.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from pathlib import Path

from memory import free_port, open_socket, rss_kib, serving

from geo_ws.protocol.frames import Opcode, encode_frame
from geo_ws.protocol.resume import SUBPROTOCOL, Start

ROOT = Path(__file__).resolve().parents[1]


def serve(port: int) -> None:
    """The measured app: /plain and /resume, each answering nothing."""
    from gevent import monkey

    monkey.patch_all()
    from flask import Flask

    import geo_ws
    from geo_ws import WebSocket

    app = Flask(__name__)
    WebSocket(app, "/plain", ping_interval=None)
    WebSocket(app, "/resume", ping_interval=None, recovery=True)
    geo_ws.run(app, port=port)


def open_resumable(port: int, resume: bool) -> socket.socket:
    """A connection to /resume (session started, hello read) or /plain."""
    if not resume:
        return open_socket(port, False, "/plain")
    sock = open_socket(port, False, "/resume", f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n")
    sock.sendall(encode_frame(Opcode.TEXT, Start().encode().encode(), mask=os.urandom(4)))
    assert b'"type":"hello"' in sock.recv(4096)
    return sock


def measure(count: int, resume: bool) -> float:
    """KiB of server RSS per idle connection, in a server of its own."""
    port = free_port()
    with serving([__file__, "--serve", str(port)], port) as server:
        open_resumable(port, resume).close()  # the first one makes the log and sessions
        time.sleep(0.5)
        before = rss_kib(server.pid)
        sockets = [open_resumable(port, resume) for _ in range(count)]
        time.sleep(1)
        idle = rss_kib(server.pid)
        for sock in sockets:
            sock.close()
        return (idle - before) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="connections (2000)")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    broker = "Redis" if os.environ.get("GEO_WS_BROKER_URL") else "in-memory"  # no password shown
    print(f"{args.n} idle connections; server RSS per connection ({broker} broker)")
    for resume in (False, True):
        name = "resumable (/resume, started)" if resume else "plain (/plain)"
        print(f"{name:<34} {measure(args.n, resume):>9.1f} KiB")


if __name__ == "__main__":
    main()
