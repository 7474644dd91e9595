"""What recovery costs: deliveries per second with an endpoint's log on and off, in one run.

    python scripts/bench_recovery.py [--messages 20000] [--clients 50] [--rounds 3]

- **Across processes**: this process broadcasts ``--messages`` messages through a
  :class:`~geo_ws.delivery.broker.RedisBroker`; a second process, on the same Redis,
  delivers each to ``--clients`` connections (real sockets, read to the end). Recovery
  off: ``NS:all`` and its log; on: the endpoint's own log, positioned delivery. The
  figure is the receiver's deliveries per second, from its first message to its last.
- **In one process**: the :class:`~geo_ws.delivery.broker.MemoryBroker` delivers
  ``--messages`` broadcasts to ``--clients`` connections, its in-memory log off and on.
- **Memory per idle resumable connection** (``--idle`` connections, 0 to skip), next to a
  plain one: :mod:`bench_resume_memory`'s figures.

Each figure is the best of ``--rounds``, off and on alternating; the ratios (on / off)
are the goals of issue 17: >= 0.80 across processes, >= 0.90 in one process. It starts
its own redis-server (``--redis URL`` to use another). Needs a quiet machine: on a busy
one the ratios mean little.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from bench_resume_memory import measure as idle_memory  # noqa: E402

from geo_ws.delivery.broker import Broker, MemoryBroker, RedisBroker  # noqa: E402
from geo_ws.delivery.history import Recovery  # noqa: E402
from geo_ws.delivery.registry import Registry  # noqa: E402
from geo_ws.io.connection import Connection  # noqa: E402
from geo_ws.protocol.outgoing import Outgoing  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = "x" * 64


def connected(
    broker: Broker, recovery: bool, clients: int
) -> tuple[Registry, list[gevent.Greenlet]]:
    """A registry of ``/bench`` with ``clients`` connections over socket pairs, attached to
    ``broker``, and the greenlets that read their other ends (each returns its byte count
    once it has read ``expected`` bytes, see :func:`drain`)."""
    registry = Registry("/bench", Recovery() if recovery else None)
    broker.attach(registry)
    readers = []
    for number in range(clients):
        server, client = socket.socketpair()
        registry.add(f"bench.{number}", Connection(server))
        readers.append(client)
    return registry, readers  # type: ignore[return-value]


def drain(sock: socket.socket, expected: int) -> float:
    """Read until ``expected`` bytes came.

    Returns:
        When the first bytes came (``time.perf_counter()``).
    """
    got = 0
    first = 0.0
    while got < expected:
        data = sock.recv(1 << 16)
        if not data:
            raise EOFError(f"{got} of {expected} bytes")
        if not got:
            first = time.perf_counter()
        got += len(data)
    return first


def frame_size() -> int:
    return len(Outgoing(PAYLOAD).frame)


def local_round(recovery: bool, messages: int, clients: int) -> float:
    """Deliveries per second of one MemoryBroker in this process."""
    broker = MemoryBroker()
    _, sockets = connected(broker, recovery, clients)
    expected = messages * frame_size()
    readers = [gevent.spawn(drain, sock, expected) for sock in sockets]  # type: ignore[arg-type]
    started = time.perf_counter()
    for _ in range(messages):
        broker.broadcast("/bench", PAYLOAD)
    gevent.joinall(readers)
    elapsed = time.perf_counter() - started
    for sock in sockets:
        sock.close()  # type: ignore[attr-defined]
    return messages * clients / elapsed


def receive(url: str, namespace: str, recovery: bool, messages: int, clients: int) -> None:
    """The receiving process: prints ``ready`` once subscribed, then its deliveries/s."""
    broker = RedisBroker(url, namespace=namespace, max_queue=10 * messages)
    _, sockets = connected(broker, recovery, clients)
    assert broker.listen(), "not subscribed"
    print("ready", flush=True)
    expected = messages * frame_size()
    readers = [gevent.spawn(drain, sock, expected) for sock in sockets]  # type: ignore[arg-type]
    gevent.joinall(readers, raise_error=True)
    elapsed = time.perf_counter() - min(reader.value for reader in readers)
    print(f"{messages * clients / elapsed:.0f}", flush=True)


def remote_round(url: str, recovery: bool, messages: int, clients: int) -> float:
    """Deliveries per second in a second process, of broadcasts published here."""
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--receive", url, namespace, str(int(recovery))]
        + [f"--messages={messages}", f"--clients={clients}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        broker = RedisBroker(url, namespace=namespace, max_queue=10 * messages)
        registry = Registry("/bench", Recovery() if recovery else None)
        broker.attach(registry)
        assert broker.listen(), "not subscribed"
        for _ in range(messages):
            broker.broadcast("/bench", PAYLOAD)
        assert broker.flush(120), "not all published"
        rate = float(receiver.stdout.readline())
        broker.stop()
        return rate
    finally:
        receiver.kill()
        receiver.wait()


def redis_server() -> tuple[str, subprocess.Popen[bytes]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0", server


def best(measure: object, rounds: int) -> tuple[float, float]:
    """The best rate off and on, over ``rounds`` alternating rounds."""
    off = on = 0.0
    for _ in range(rounds):
        off = max(off, measure(False))  # type: ignore[operator]
        on = max(on, measure(True))  # type: ignore[operator]
    return off, on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", help="a Redis URL (default: a redis-server of its own)")
    parser.add_argument("--idle", type=int, default=2000, help="idle connections (2000)")
    parser.add_argument("--receive", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receive:
        url, namespace, recovery = args.receive
        receive(url, namespace, recovery == "1", args.messages, args.clients)
        return
    server = None
    url = args.redis
    if url is None:
        url, server = redis_server()
    try:
        print(f"{args.messages} broadcasts of {len(PAYLOAD)} bytes to {args.clients} clients")
        goals = (("across processes (Redis)", 0.80), ("in one process (memory)", 0.90))
        figures = (
            best(lambda on: remote_round(url, on, args.messages, args.clients), args.rounds),
            best(lambda on: local_round(on, args.messages, args.clients), args.rounds),
        )
        for (name, goal), (off, on) in zip(goals, figures, strict=True):
            verdict = "ok" if on >= goal * off else "BELOW GOAL"
            print(
                f"{name}: recovery off {off:,.0f} deliveries/s, on {on:,.0f}: "
                f"{on / off:.2f}x (goal >= {goal:.2f}x) {verdict}"
            )
        if args.idle:
            plain, resumable = (idle_memory(args.idle, resume) for resume in (False, True))
            print(
                f"memory per idle connection (in-memory broker, {args.idle}): plain "
                f"{plain:.1f} KiB, resumable {resumable:.1f} KiB"
            )
    finally:
        if server is not None:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
