"""What the per-connection rate limits cost: echo with limits on against limits off.

    python scripts/bench_ratelimit.py                   # 5 rounds of 20 000 messages each
    python scripts/bench_ratelimit.py --rounds 9 --messages 50000

One process serves two echo endpoints on geo_ws's built-in server, ``/off`` without
limits and ``/on`` with both rates limited far above what the client sends (every
message is checked, none refused), and one client echoes 32-byte messages through each,
``--window`` in flight, alternating the endpoints round by round so that a busy
machine slows both alike. Prints the best rate of each and their ratio, and the cost of
one check alone (:meth:`~geo_ws.io.ratelimit.RateLimit.admit`, best of 5 timings).
Run it on a quiet machine: client and server share one core.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import time  # noqa: E402
import timeit  # noqa: E402

from flask import Flask  # noqa: E402

from geo_ws import WebSocket  # noqa: E402
from geo_ws.client import connect  # noqa: E402
from geo_ws.io.ratelimit import RateLimit  # noqa: E402
from geo_ws.server.builtin import Server  # noqa: E402

MESSAGE = "x" * 32


def echo_app() -> Flask:
    """``/off`` and ``/on`` echo every message; ``/on`` checks each against its limits."""
    app = Flask(__name__)
    plain = WebSocket(app, "/off")
    limited = WebSocket(app, "/on", max_messages_per_second=1e9, max_bytes_per_second=1e12)

    @plain.on("message")
    @limited.on("message")
    def echo(msg: str) -> str:
        return msg

    return app


def echo_rate(url: str, messages: int, window: int) -> float:
    """Messages per second echoed through ``url``, ``window`` of them in flight."""
    with connect(url) as client:
        started = time.perf_counter()
        for _ in range(window):
            client.send(MESSAGE)
        for sent in range(window, messages + window):
            client.recv(timeout=10)
            if sent < messages:
                client.send(MESSAGE)
        return messages / (time.perf_counter() - started)


def main() -> None:
    """Run the benchmark (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=50)
    args = parser.parse_args()
    server = Server(("127.0.0.1", 0), echo_app(), log=None)
    server.start()
    base = f"ws://127.0.0.1:{server.address[1]}"
    best = {"off": 0.0, "on": 0.0}
    try:
        for _ in range(args.rounds):
            for name in best:
                rate = echo_rate(f"{base}/{name}", args.messages, args.window)
                best[name] = max(best[name], rate)
    finally:
        server.shutdown(timeout=2)
    limit = RateLimit(1e9, 1e12)
    check = min(timeit.repeat(lambda: limit.admit(MESSAGE), number=100_000, repeat=5)) / 100_000
    print(f"echo, limits off: {best['off']:,.0f} msg/s (best of {args.rounds})")
    print(f"echo, limits on:  {best['on']:,.0f} msg/s ({best['on'] / best['off']:.3f}x)")
    print(f"one check (messages and bytes): {check * 1e9:.0f} ns")


if __name__ == "__main__":
    main()
