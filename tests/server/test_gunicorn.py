"""geo_ws under real gunicorn subprocesses: every worker class users run, the geo_ws
worker's shutdown and timeouts, and many workers and hosts sharing a real Redis."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

import gevent
import pytest

from geo_ws import Emitter
from geo_ws.delivery.ids import node_of
from tests.helpers import WAIT, RawClient, close_clients
from tests.live_apps.process import SERVING, START_TIMEOUT, ServerProcess
from tests.live_apps.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, imported for pytest

GEO_WS_WORKER = "geo_ws.gunicorn.Worker"
#: gunicorn's own gevent workers and gevent-websocket's.
FOREIGN_WORKERS = [
    "gevent",
    "gevent_pywsgi",
    "geventwebsocket.gunicorn.workers.GeventWebSocketWorker",
]
FOREIGN_IDS = ["gevent", "gevent_pywsgi", "GeventWebSocketWorker"]
LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
CLOSE_HANDLER = re.compile(r"^close handler ran for (\S+)$")
SHUTTING_DOWN = re.compile(r"\[(\d+)\] \[INFO\] geo_ws worker \d+ shutting down: closing (\d+)")
BOOTING = re.compile(r"Booting worker with pid: (\d+)")
#: gunicorn 25.1 opens a control socket by default, and has the flag that turns it off
#: (two instances at once would share its path); earlier versions know neither.
GUNICORN = tuple(int(part) for part in metadata.version("gunicorn").split(".")[:2])
NO_CONTROL_SOCKET = ("--no-control-socket",) if GUNICORN >= (25, 1) else ()
#: gunicorn before 24 logs the SIGTERM its master sends old workers on a reload as an
#: error (benoitc/gunicorn#3050): not one of ours.
RELOAD_NOISE = re.compile(r"\[ERROR\] Worker \(pid:\d+\) was sent SIGTERM!")


@contextmanager
def gunicorn(
    app: str,
    *options: str,
    workers: int = 1,
    worker_class: str = GEO_WS_WORKER,
    stop: signal.Signals = signal.SIGTERM,
) -> Iterator[tuple[ServerProcess, str]]:
    """``gunicorn -k WORKER_CLASS -w WORKERS OPTIONS APP`` on a free port.

    Yields the process and ``host:port`` once the master listens (and, with geo_ws's
    worker, once every worker serves). Afterwards the test's clients are closed and
    the master is stopped with ``stop`` (SIGQUIT: at once; killed if it lingers).
    """
    server = ServerProcess(
        "-m", "gunicorn", *NO_CONTROL_SOCKET, "-b", "127.0.0.1:0",
        "-k", worker_class, "-w", str(workers), "--graceful-timeout", "3", *options, app,
    )  # fmt: skip
    try:
        port = server.stderr.wait_for(LISTENING, START_TIMEOUT).group(1)
        if worker_class == GEO_WS_WORKER:
            for _ in range(workers):
                server.stderr.wait_for(SERVING, START_TIMEOUT)
        yield server, f"127.0.0.1:{port}"
    finally:
        close_clients()
        if server.proc.poll() is None:
            server.proc.send_signal(stop)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        server.stop()


def assert_no_errors(server: ServerProcess) -> None:
    """Nothing in gunicorn's log (stderr) looks like an error."""
    bad = [
        line
        for line in server.stderr.lines
        if ("Traceback" in line or "[ERROR]" in line) and not RELOAD_NOISE.search(line)
    ]
    assert not bad, "\n".join(server.stderr.lines)


# -- every worker class ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "worker_class", [*FOREIGN_WORKERS, GEO_WS_WORKER], ids=[*FOREIGN_IDS, "geo_ws"]
)
def test_every_gunicorn_worker_class_serves_websockets_and_http(worker_class: str) -> None:
    with gunicorn("tests.live_apps.closing:app", worker_class=worker_class) as (server, address):
        client = RawClient(address, "/ws?name=visitor")
        assert client.status == 101
        assert client.recv() == "welcome"
        client.send_text("ping")
        assert client.recv() == "ping"
        client.send_frame(0x2, b"\x00\xffbinary")
        assert client.recv() == b"\x00\xffbinary"
        with urllib.request.urlopen(f"http://{address}/", timeout=WAIT) as response:
            assert response.read() == b"ok"  # HTTP on the same port, meanwhile
        client.send_close(4000, "done")
        assert client.recv() == "bye"  # the close handler's answer, before the Close
        assert client.recv_close().code == 4000  # its own code, answered
        # Then TCP closes, and nothing else comes: no second 101, Close or HTTP error.
        assert client.sock.recv(65536) == b""
        assert not client._events
        server.stdout.wait_for(CLOSE_HANDLER, WAIT)
    assert_no_errors(server)


@pytest.mark.parametrize("worker_class", FOREIGN_WORKERS, ids=FOREIGN_IDS)
def test_with_geo_ws_hooks_gunicorns_own_workers_close_websockets_with_1001(
    worker_class: str,
) -> None:
    hooks = ("-c", "python:geo_ws.gunicorn_hooks", "--graceful-timeout", "30")
    app = "tests.live_apps.closing:app"
    with gunicorn(app, *hooks, worker_class=worker_class) as (server, address):
        client = RawClient(address, "/ws?name=leaving")
        assert client.recv() == "welcome"
        started = gevent.get_hub().loop.now()
        server.proc.send_signal(signal.SIGTERM)
        assert client.recv() == "bye"
        assert client.recv_close().code == 1001
        client.send_close(1001)
        assert client.at_eof()
        assert server.wait(timeout=10) == 0
        # Without the hook: dropped (1006) after the 30 s of --graceful-timeout.
        assert gevent.get_hub().loop.now() - started < 10
    assert "close handler ran for leaving" in server.stdout.finish()
    assert_no_errors(server)


# -- the geo_ws worker ----------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_stopping_workers_close_websockets_with_1001_and_run_close_handlers(signum: int) -> None:
    with gunicorn("tests.live_apps.closing:app", workers=2) as (server, address):
        clients = [RawClient(address, f"/ws?name=c{n}") for n in range(6)]
        assert [client.recv() for client in clients] == ["welcome"] * 6
        started = gevent.get_hub().loop.now()
        server.proc.send_signal(signum)  # SIGHUP: new workers, old ones stopped with SIGTERM
        for client in clients:
            assert client.recv() == "bye"
            assert client.recv_close().code == 1001
            client.send_close(1001)
            assert client.at_eof()
        # Well within --graceful-timeout 3: the handshakes completed, nobody waited.
        assert gevent.get_hub().loop.now() - started < 3
        if signum == signal.SIGTERM:
            assert server.wait(timeout=5) == 0
        else:  # the master goes on with fresh workers
            for _ in range(2):
                server.stderr.wait_for(SERVING, START_TIMEOUT)
            fresh = RawClient(address, "/ws?name=fresh")
            assert fresh.recv() == "welcome"
    # Workers share the pipe and print() writes the newline apart: lines may be mixed.
    printed = "\n".join(server.stdout.finish())
    assert sorted(re.findall(r"close handler ran for (c\d)", printed)) == [
        f"c{n}" for n in range(6)
    ]
    assert_no_errors(server)


def test_the_access_log_shows_handshakes_in_gunicorns_format_with_its_environ() -> None:
    access_format = '%(h)s "%(r)s" %(s)s %({user-agent}i)s %({raw_uri}e)s %({gunicorn.sock}e)s'
    options = ("--access-logfile", "-", "--access-logformat", access_format)
    with gunicorn("tests.live_apps.closing:app", *options) as (server, address):
        client = RawClient(address, "/ws?name=a%20b", {"User-Agent": "probe/1"})
        assert client.status == 101
        assert client.recv() == "welcome"
        server.stdout.wait_for(
            re.compile(
                r'^127\.0\.0\.1 "GET /ws\?name=a%20b HTTP/1\.1" 101 probe/1 '
                r"/ws\?name=a%20b <gevent\._socket3\.socket "
            ),
            WAIT,
        )
        refused = RawClient(address, "/nowhere", {"User-Agent": "probe/2"})
        assert refused.status == 404
        server.stdout.wait_for(re.compile(r'"GET /nowhere HTTP/1\.1" 404 probe/2 /nowhere <'), WAIT)
        with urllib.request.urlopen(f"http://{address}/?q=1", timeout=WAIT) as response:
            assert response.read() == b"ok"
        server.stdout.wait_for(re.compile(r'"GET /\?q=1 HTTP/1\.1" 200 Python-urllib/'), WAIT)
    assert_no_errors(server)


def test_a_handler_sleeping_longer_than_the_worker_timeout_stalls_nobody() -> None:
    with gunicorn("tests.live_apps.cluster:app", "--timeout", "2") as (server, address):
        sleeper, other = RawClient(address, "/ws"), RawClient(address, "/ws")
        pid = json.loads(sleeper.recv())["pid"]
        json.loads(other.recv())
        rounds: list[float] = []

        def meanwhile() -> None:
            """The other client is answered at once, all along."""
            while True:
                sent = gevent.get_hub().loop.now()
                other.send_text(json.dumps({"echo": len(rounds)}))
                assert json.loads(other.recv()) == {"echo": len(rounds)}
                rounds.append(gevent.get_hub().loop.now() - sent)
                gevent.sleep(0.2)  # pacing the other client, not synchronising

        started = gevent.get_hub().loop.now()
        sleeper.send_text(json.dumps({"sleep": 5}))
        other_client = gevent.spawn(meanwhile)
        sleeper.sock.settimeout(None)  # bounded by recv's own timeout below
        assert sleeper.recv(timeout=WAIT + 3) == "slept"
        assert gevent.get_hub().loop.now() - started >= 5
        assert not other_client.dead, other_client.exception
        other_client.kill()
        assert len(rounds) >= 10 and max(rounds) < 0.5, rounds
        # Same worker, never restarted for a timeout.
        assert json.loads(RawClient(address, "/ws").recv())["pid"] == pid
    assert not any("WORKER TIMEOUT" in line for line in server.stderr.lines)
    assert_no_errors(server)


# -- many workers and hosts over Redis ------------------------------------------------------


def chat_messages(client: RawClient, until: Any) -> list[dict[str, Any]]:
    """The chat's JSON messages to ``client``, up to the first for which ``until`` holds."""
    messages: list[dict[str, Any]] = []
    while not messages or not until(messages[-1]):
        messages.append(json.loads(client.recv()))
    return messages


def test_chat_on_three_workers_delivers_every_broadcast_once_in_order_then_1001(
    redis_server: RedisServer,
) -> None:
    clients_count, senders, per_sender = 30, 5, 20
    with gunicorn(
        "examples.chat:app", "-e", f"GEO_WS_BROKER_URL={redis_server.url}", workers=3
    ) as (server, address):
        # Connected all at once, so that the workers share them.
        greenlets = [
            gevent.spawn(RawClient, address, f"/chat/ws?name=c{n}") for n in range(clients_count)
        ]
        gevent.joinall(greenlets, timeout=WAIT, raise_error=True)
        clients = [greenlet.value for greenlet in greenlets]
        # Its own "join" came back: its worker is subscribed (that precedes the handler).
        for n, client in enumerate(clients):
            chat_messages(client, lambda m, n=n: m == {"event": "join", "name": f"c{n}"})
        clients[0].send_text("sync")
        for client in clients:  # other joins may still come before "sync"
            chat_messages(client, lambda m: m == {"from": "c0", "text": "sync"})

        def send(sender: RawClient, name: str) -> None:
            for n in range(per_sender):
                sender.send_text(f"{name}:{n}")

        gevent.joinall(
            [gevent.spawn(send, clients[s * 6], f"c{s * 6}") for s in range(senders)],
            timeout=WAIT,
            raise_error=True,
        )
        clients[0].send_text("end")  # after its own messages; others' may come after it
        expected = {
            f"c{s * 6}": [f"c{s * 6}:{n}" for n in range(per_sender)] for s in range(senders)
        }
        for client in clients:
            got: dict[str, list[str]] = {name: [] for name in expected}
            while any(len(got[name]) < per_sender for name in expected) or not got.get("end"):
                message = json.loads(client.recv())
                if "event" in message:
                    continue  # a late "join" of another worker's client
                text = message["text"]
                got.setdefault("end" if text == "end" else message["from"], []).append(text)
            got.pop("end")
            assert got == expected  # every sender's messages, once each, in its order
        server.proc.send_signal(signal.SIGTERM)
        for client in clients:
            assert client.recv_close().code == 1001  # after the others' "leave" events
            client.send_close(1001)
        assert server.wait(timeout=5) == 0
    per_worker = Counter(
        {
            match.group(1): int(match.group(2))
            for line in server.stderr.lines
            if (match := SHUTTING_DOWN.search(line))
        }
    )
    assert sum(per_worker.values()) == clients_count, server.stderr.lines
    assert len([count for count in per_worker.values() if count]) >= 2, per_worker
    assert_no_errors(server)


def clients_on_every_worker(address: str, workers: int) -> dict[int, tuple[RawClient, str]]:
    """One client (and its id) per worker of a master; extra connections are closed."""
    found: dict[int, tuple[RawClient, str]] = {}
    for _ in range(10):
        batch = [gevent.spawn(RawClient, address, "/ws") for _ in range(8)]
        gevent.joinall(batch, timeout=WAIT, raise_error=True)
        for greenlet in batch:
            client = greenlet.value
            hello = json.loads(client.recv())
            if hello["pid"] in found:
                client.close()
            else:
                found[hello["pid"]] = (client, hello["id"])
        if len(found) == workers:
            return found
    raise AssertionError(f"connections reached {len(found)} of {workers} workers")


def test_send_to_rooms_and_close_across_workers_and_hosts(redis_server: RedisServer) -> None:
    broker = ["-e", f"GEO_WS_BROKER_URL={redis_server.url}"]
    app = "tests.live_apps.cluster:app"
    with (
        gunicorn(app, "--preload", *broker, workers=2) as (host_a, address_a),
        gunicorn(app, *broker, workers=2) as (host_b, address_b),
    ):
        nodes = list(clients_on_every_worker(address_a, 2).values())
        nodes += clients_on_every_worker(address_b, 2).values()
        # Four processes, four nodes: even workers forked from a preloaded app differ.
        assert len({node_of(connection_id) for _, connection_id in nodes}) == 4
        for source, _ in nodes:  # send_to: every pair, within and across hosts
            for target, target_id in nodes:
                source.send_text(json.dumps({"to": target_id, "text": f"to {target_id}"}))
                assert target.recv() == f"to {target_id}"
        (a1, _), (a2, _), (b1, _), (b2, b2_id) = nodes
        for member in (a2, b1):
            member.send_text(json.dumps({"join": "lobby"}))
            assert json.loads(member.recv()) == {"joined": "lobby"}
        a1.send_text(json.dumps({"room": "lobby", "text": "lobby only"}))
        assert [a2.recv(), b1.recv()] == ["lobby only"] * 2
        a1.send_text(json.dumps({"all": "everyone"}))
        assert [client.recv() for client, _ in nodes] == ["everyone"] * 4  # a1, b2: nothing else
        emitter = Emitter(redis_server.url)
        try:
            assert emitter.send_to(b2_id, "from a script") == 1
            assert b2.recv() == "from a script"
        finally:
            emitter.disconnect()
        a1.send_text(json.dumps({"close": b2_id, "code": 4002}))
        assert b2.recv_close().code == 4002
    for host in (host_a, host_b):
        assert_no_errors(host)


def test_the_access_log_escapes_what_the_client_sent_and_bad_heads_get_400() -> None:
    access_format = '"%(r)s" %(s)s "%({user-agent}i)s"'
    options = ("--access-logfile", "-", "--access-logformat", access_format)
    upgrade = (
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    heads = [
        f"GET /ws HTTP/1.1\r\nUser-Agent: curl\nFORGED-LINE\r\n{upgrade}\r\n",  # quick path
        "GET / HTTP/1.1\r\nUser-Agent: curl\nFORGED-LINE\r\n\r\n",  # pywsgi's parser
        f"GET /ws HTTP/1.1\r\nUser-Agent: probe\x1b[2J\r\n{upgrade}\r\n",
    ]
    with gunicorn("tests.live_apps.closing:app", *options) as (server, address):
        host, port = address.split(":")
        for head in heads:
            with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
                sock.sendall(head.encode("latin-1"))
                assert sock.recv(12) == (b"HTTP/1.1 400" if "FORGED" in head else b"HTTP/1.1 101")
        server.stdout.wait_for(re.compile(r'^"GET /ws HTTP/1\.1" 101 "probe\\x1b\[2J"$'), WAIT)
    assert not any("FORGED" in line for line in server.stdout.lines), server.stdout.lines
    assert_no_errors(server)
