"""Server memory per WebSocket connection, with and without permessage-deflate.

    python scripts/memory.py [-n 2000]

For each configuration it starts ``scripts/bench_target.py`` in a subprocess, opens
N connections to ``/echo`` (offering permessage-deflate or not), reads the server's
RSS, then sends one 1 KiB message on each (so that compressing connections create
their zlib streams) and reads it again. It prints KiB per connection, idle and after
one message. Loopback only; every connection is closed at the end.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from geo_ws.protocol.frames import Opcode, encode_frame

ROOT = Path(__file__).resolve().parents[1]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def open_socket(
    port: int, offer_deflate: bool, path: str = "/echo", headers: str = ""
) -> socket.socket:
    """A WebSocket to ``path`` after its 101; ``headers``: more lines, each ending in CRLF."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    if offer_deflate:
        headers += "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n".encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert (b"permessage-deflate" in head) == offer_deflate, head
    return sock


@contextmanager
def serving(
    args: list[str], port: int, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``python ARGS`` in the repository, once it accepts connections on ``port``;
    terminated at the end."""
    server = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield server
    finally:
        server.terminate()
        server.wait(10)


def measure(count: int, compression: bool) -> tuple[float, float]:
    port = free_port()
    env = dict(os.environ, PORT=str(port), COMPRESSION="deflate" if compression else "")
    with serving(["scripts/bench_target.py"], port, env) as server:
        time.sleep(0.5)
        before = rss_kib(server.pid)
        sockets = [open_socket(port, compression) for _ in range(count)]
        time.sleep(1)
        idle = rss_kib(server.pid)
        message = encode_frame(Opcode.TEXT, b"geo_ws " * 146, mask=os.urandom(4))
        for sock in sockets:
            sock.sendall(message)
        for sock in sockets:
            sock.recv(65536)
        time.sleep(1)
        active = rss_kib(server.pid)
        for sock in sockets:
            sock.close()
        return (idle - before) / count, (active - before) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="connections (2000)")
    count = parser.parse_args().n
    print(f"{count} connections to scripts/bench_target.py /echo; server RSS per connection")
    print(f"{'configuration':<34} {'idle KiB':>9} {'after 1 message':>16}")
    for compression in (False, True):
        idle, active = measure(count, compression)
        name = "permessage-deflate negotiated" if compression else "no compression"
        print(f"{name:<34} {idle:>9.1f} {active:>16.1f}")


if __name__ == "__main__":
    main()
