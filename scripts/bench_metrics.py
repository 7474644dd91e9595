"""What the Prometheus metrics cost: echo with metrics on against metrics off, same run.

    python scripts/bench_metrics.py                       # 5 rounds of 5 s each way
    python scripts/bench_metrics.py --rounds 1 --seconds 1    # a quick check that it runs

Two servers (geo_ws's built-in one, one process each) serve the same echo endpoint,
one with ``GEO_WS_METRICS_PATH`` set (and scraped every second, as Prometheus would),
one without. Rounds alternate between them so that a machine whose load changes
affects both alike. Clients (greenlets in this process) pipeline small text messages
on ``--connections`` connections, ``--window`` at a time, and count the echoes.

Each round gives messages per second and messages per CPU second of the server
process (from /proc: its own work only, whatever else runs on the machine); the last
lines give the medians and their ratios, on/off (the goal: >= 0.95). Needs a quiet
machine for figures worth keeping.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"x" * 32
SERVER = """
from gevent import monkey

monkey.patch_all()
import sys

from flask import Flask

from geo_ws import WebSocket, run

app = Flask(__name__)
if sys.argv[1] == "on":
    app.config["GEO_WS_METRICS_PATH"] = "/metrics"
WebSocket(app, "/echo").on("message")(lambda msg: msg)
run(app, "127.0.0.1", int(sys.argv[2]))
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(metrics: bool, port: int) -> subprocess.Popen[bytes]:
    """One echo server; returns once it accepts connections."""
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, "on" if metrics else "off", str(port)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
        except urllib.error.HTTPError:
            return server  # a 404: it serves
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"the server on port {port} did not start")


def run_round(port: int, pid: int, args: argparse.Namespace, scrape: bool) -> tuple[float, float]:
    """Drive one server for ``args.seconds``.

    Returns:
        Messages per second, and messages per CPU second of the server.
    """
    import gevent

    from geo_ws.client import connect

    clients = [connect(f"ws://127.0.0.1:{port}/echo") for _ in range(args.connections)]
    counts = [0] * len(clients)
    stop = time.monotonic() + args.seconds
    message = PAYLOAD.decode()

    def chat(i: int) -> None:
        client = clients[i]
        while time.monotonic() < stop:
            for _ in range(args.window):
                client.send(message)
            for _ in range(args.window):
                client.recv()
            counts[i] += args.window

    def scraper() -> None:
        while True:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            gevent.sleep(1.0)

    scraping = gevent.spawn(scraper) if scrape else None
    cpu, started = cpu_seconds(pid), time.monotonic()
    gevent.joinall([gevent.spawn(chat, i) for i in range(len(clients))], raise_error=True)
    elapsed, cpu = time.monotonic() - started, cpu_seconds(pid) - cpu
    if scraping is not None:
        scraping.kill()
    for client in clients:
        client.close()
    total = sum(counts)
    return total / elapsed, total / max(cpu, 1e-9)


def main() -> None:
    """Alternate rounds between the two servers; print each, then the medians."""
    from gevent import monkey

    monkey.patch_all()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds each way")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a round")
    parser.add_argument("--connections", type=int, default=20, help="client connections")
    parser.add_argument("--window", type=int, default=20, help="messages in flight each")
    parser.add_argument("--port", type=int, default=8851, help="first of two ports")
    args = parser.parse_args()

    servers = {"off": start_server(False, args.port), "on": start_server(True, args.port + 1)}
    ports = {"off": args.port, "on": args.port + 1}
    results: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    try:
        print(f"{'round':>5} {'metrics':>7} {'msg/s':>10} {'msg/CPU s':>10}")
        for round_ in range(args.rounds):
            for name in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                rate, per_cpu = run_round(ports[name], servers[name].pid, args, scrape=name == "on")
                results[name].append((rate, per_cpu))
                print(f"{round_ + 1:>5} {name:>7} {rate:>10,.0f} {per_cpu:>10,.0f}", flush=True)
    finally:
        for server in servers.values():
            server.terminate()
            server.wait(10)
    medians = {
        name: (
            statistics.median(rate for rate, _ in rounds),
            statistics.median(per_cpu for _, per_cpu in rounds),
        )
        for name, rounds in results.items()
    }
    for name, (rate, per_cpu) in medians.items():
        print(f"median {name:>3}: {rate:>10,.0f} msg/s {per_cpu:>10,.0f} msg/CPU s")
    print(
        f"on/off: {medians['on'][0] / medians['off'][0]:.3f} (msg/s), "
        f"{medians['on'][1] / medians['off'][1]:.3f} (msg/CPU s); goal >= 0.95"
    )


if __name__ == "__main__":
    main()
