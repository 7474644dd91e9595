"""Resume across what a deploy does, with a real Redis: a connection reset, the built-in
server stopped (SIGTERM) and started again on its port, a gunicorn worker killed
(SIGKILL), and a gunicorn reload (SIGHUP) under a hundred clients. The messages come
from :class:`~geo_ws.Emitter` senders in the test, which outlive every server process;
each client must end with every message once, in each sender's order."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterator

import gevent
import pytest
from flask import Flask
from gevent.event import Event

from geo_ws import Emitter, Recovery, RedisBroker, WebSocket
from geo_ws.client import MessagesLost, ResumingConnection
from geo_ws.exceptions import ConnectionClosed
from geo_ws.io.backoff import Backoff
from geo_ws.protocol.resume import SUBPROTOCOL, Resume, parse_hello
from tests.helpers import WAIT, RawClient
from tests.live_apps.process import ServerProcess
from tests.live_apps.proxy import CuttingProxy
from tests.live_apps.redis_server import RedisServer, free_port, redis_server
from tests.server.test_gunicorn import gunicorn

__all__ = ["redis_server"]  # the fixture, imported for pytest

ENDPOINT = "/ws"
#: The live app's connect handler: id, resumed, recovered, pid.
CONNECT = re.compile(r"^connect (\S+) (\S+) (\S+) (\d+)$")
#: How long a test waits for a whole stream, reconnections included.
STREAM_WAIT = 60.0


class Collector:
    """Reads a resuming client in a greenlet of its own until every sender's ``end``."""

    def __init__(self, client: ResumingConnection, senders: int) -> None:
        self.client = client
        self.received: list[str] = []
        self.lost: list[MessagesLost] = []
        self._ends = senders
        self._progress = Event()
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while self._ends:
            try:
                message = self.client.recv(timeout=STREAM_WAIT)
            except MessagesLost as exc:
                self.lost.append(exc)
                continue
            assert isinstance(message, str)
            self.received.append(message)
            self._ends -= message.endswith(":end")
            self._progress.set()

    def wait_for(self, count: int) -> None:
        """Wait until ``count`` messages came (bounded)."""
        with gevent.Timeout(STREAM_WAIT):
            while len(self.received) < count:
                self._progress.clear()
                self._progress.wait()

    def result(self) -> list[str]:
        """Every message, once the ends came (bounded)."""
        self.greenlet.get(timeout=STREAM_WAIT)
        return self.received


def stream(emitter: Emitter, tag: str, count: int, pause: float = 0.002) -> None:
    """Broadcast ``TAG:0`` ... ``TAG:count-1``, then ``TAG:end``, pausing every ten."""
    for i in range(count):
        emitter.broadcast(ENDPOINT, f"{tag}:{i}")
        if i % 10 == 0:
            gevent.sleep(pause)  # a stream over time: the cut falls in its middle
    emitter.broadcast(ENDPOINT, f"{tag}:end")


def expected(tag: str, count: int) -> list[str]:
    return [f"{tag}:{i}" for i in range(count)] + [f"{tag}:end"]


def resuming(address: str) -> ResumingConnection:
    return ResumingConnection(
        f"ws://{address}{ENDPOINT}", timeout=WAIT, backoff=Backoff(0.05, 1.0), reconnect_for=30
    )


def joined(client: ResumingConnection) -> ResumingConnection:
    """Once the client's own message came back, its worker has attached the endpoint
    (the emitters then write to its log)."""
    client.send('{"join": "blue"}')
    assert client.recv(timeout=WAIT) == "joined blue"
    return client


@pytest.fixture
def broker_env(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Server subprocesses use the test's Redis."""
    monkeypatch.setenv("GEO_WS_BROKER_URL", redis_server.url)
    return redis_server.url


class BuiltinServer:
    """The live app under ``geo-ws run`` on a port of its own, stopped as a deploy does
    (SIGTERM: its clients get 1001) and started again on the same port at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process = self.start()

    def start(self) -> ServerProcess:
        self.process = ServerProcess(
            "-m", "geo_ws", "run", "tests.live_apps.resumable:app", "--port", str(self.port)
        )  # fmt: skip
        assert self.process.wait_serving() == ("127.0.0.1", self.port)
        return self.process

    def stop(self) -> list[str]:
        """Stop it; its stdout."""
        self.process.proc.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=10) == 0
        self.process.stop()
        return self.process.stdout.lines


@pytest.fixture
def builtin(broker_env: str) -> Iterator[BuiltinServer]:
    server = BuiltinServer()
    yield server
    server.process.stop()


@pytest.fixture
def emitter(broker_env: str) -> Iterator[Emitter]:
    emitter = Emitter(broker_env)
    yield emitter
    emitter.disconnect()


# -- one process, TCP reset -------------------------------------------------------------------


@pytest.fixture
def redis_app_address(serve: Callable[[Flask], str], redis_server: RedisServer) -> Iterator[str]:
    broker = RedisBroker(redis_server.url)
    app = Flask(__name__)
    live = WebSocket(app, ENDPOINT, recovery=Recovery(age=30), broker=broker)
    live.on("message")(lambda ws, msg: ws.join(msg) or f"joined {msg}")
    yield serve(app)
    broker.stop()


def test_a_reset_connection_resumes_through_redis(redis_app_address: str, emitter: Emitter) -> None:
    proxy = CuttingProxy(redis_app_address)
    try:
        client = resuming(proxy.address)
        client.send("blue")
        assert client.recv(timeout=WAIT) == "joined blue"
        collector = Collector(client, 1)
        sender = gevent.spawn(stream, emitter, "a", 1000)
        collector.wait_for(100)
        assert not sender.dead
        assert proxy.cut() == 1
        sender.get(timeout=STREAM_WAIT)
        assert collector.result() == expected("a", 1000)
        assert (client.reconnects, client.last_drop, client.recovered) == (1, 1006, True)
        assert collector.lost == []
        # Coming back on another connection closes the older one (1008).
        raw = RawClient(redis_app_address, ENDPOINT, {"Sec-WebSocket-Protocol": SUBPROTOCOL})
        raw.send_text(Resume(client._session or "", "", 0).encode())
        hello = parse_hello(raw.recv())
        assert (hello.id, hello.resumed) == (client.id, True)
        with pytest.raises(ConnectionClosed) as info:
            client.recv(timeout=WAIT)
        assert info.value.code == 1008
        raw.close()
    finally:
        proxy.stop()


def test_a_plain_client_of_the_endpoint_gets_plain_frames_through_redis(
    redis_app_address: str, emitter: Emitter
) -> None:
    plain = RawClient(redis_app_address, ENDPOINT)
    assert "Sec-WebSocket-Protocol" not in plain.response_head
    plain.send_text("blue")
    assert plain.recv() == "joined blue"
    emitter.broadcast(ENDPOINT, "to all")
    emitter.broadcast(ENDPOINT, b"\x00bytes", room="blue")
    assert [plain.recv(), plain.recv()] == ["to all", b"\x00bytes"]
    plain.close()


def test_a_redis_restarted_without_its_data_is_told_to_the_client(
    redis_app_address: str, redis_server: RedisServer
) -> None:
    proxy = CuttingProxy(redis_app_address)
    try:
        client = resuming(proxy.address)
        first_id = client.id
        client.send("blue")
        assert client.recv(timeout=WAIT) == "joined blue"
        redis_server.kill()
        proxy.cut()  # meanwhile handshakes get 503 (no subscription): the client retries
        redis_server.start()  # no persistence: logs and sessions are gone
        with pytest.raises(MessagesLost) as info:
            client.recv(timeout=STREAM_WAIT)
        assert info.value.hello.resumed is False
        assert client.id != first_id
        client.send("again")
        assert client.recv(timeout=WAIT) == "joined again"
    finally:
        proxy.stop()


# -- the built-in server stopped and started again ---------------------------------------------


def test_the_built_in_server_restarted_on_its_port_loses_nothing(
    builtin: BuiltinServer, emitter: Emitter
) -> None:
    client = joined(resuming(builtin.address))
    first_id = client.id
    collector = Collector(client, 1)
    sender = gevent.spawn(stream, emitter, "a", 1000)
    collector.wait_for(200)
    assert not sender.dead
    builtin.stop()
    builtin.start()  # meanwhile the stream went on, into the log
    sender.get(timeout=STREAM_WAIT)
    assert collector.result() == expected("a", 1000)
    assert (client.id, client.resumed, client.recovered) == (first_id, True, True)
    assert (client.reconnects, client.last_drop) == (1, 1001)
    connects = [line.split() for line in builtin.stop() if line.startswith("connect")]
    assert connects == [["connect", first_id, "True", "True", connects[0][4]]]


def test_past_the_window_the_client_is_told(
    monkeypatch: pytest.MonkeyPatch, broker_env: str, emitter: Emitter
) -> None:
    monkeypatch.setenv("RESUME_AGE", "0.5")
    builtin = BuiltinServer()
    try:
        client = joined(resuming(builtin.address))
        first_id = client.id
        builtin.stop()
        emitter.broadcast(ENDPOINT, "missed")
        gevent.sleep(1.0)  # the window (0.5 s) passes while the server is down
        builtin.start()
        with pytest.raises(MessagesLost) as info:
            client.recv(timeout=STREAM_WAIT)
        assert info.value.hello.resumed is False
        assert (client.resumed, client.recovered) == (False, False)
        assert client.id != first_id
        emitter.broadcast(ENDPOINT, "live")
        assert client.recv(timeout=WAIT) == "live"  # and not "missed"
    finally:
        builtin.process.stop()


# -- gunicorn ----------------------------------------------------------------------------------


def test_a_killed_gunicorn_worker_loses_nothing(emitter: Emitter) -> None:
    with gunicorn("tests.live_apps.resumable:app", workers=2) as (server, address):
        client = joined(resuming(address))
        pid = int(server.stdout.wait_for(CONNECT, WAIT).group(4))
        collector = Collector(client, 1)
        sender = gevent.spawn(stream, emitter, "a", 1000)
        collector.wait_for(200)
        assert not sender.dead
        os.kill(pid, signal.SIGKILL)
        sender.get(timeout=STREAM_WAIT)
        assert collector.result() == expected("a", 1000)
        assert (client.reconnects, client.last_drop, client.recovered) == (1, 1006, True)


def test_a_gunicorn_reload_under_a_hundred_clients_loses_and_repeats_nothing(
    broker_env: str,
) -> None:
    clients_count, senders, per_sender = 100, 4, 250
    emitters = [Emitter(broker_env) for _ in range(senders)]
    with gunicorn("tests.live_apps.resumable:app", workers=3) as (server, address):
        greenlets = [gevent.spawn(resuming, address) for _ in range(clients_count)]
        gevent.joinall(greenlets, timeout=STREAM_WAIT, raise_error=True)
        clients = [joined(greenlet.value) for greenlet in greenlets]
        collectors = [Collector(client, senders) for client in clients]
        streams = [
            gevent.spawn(stream, emitter, f"s{n}", per_sender, 0.05)
            for n, emitter in enumerate(emitters)
        ]
        collectors[0].wait_for(senders * per_sender // 4)
        assert not any(greenlet.dead for greenlet in streams)
        server.proc.send_signal(signal.SIGHUP)  # new workers; the old ones close with 1001
        gevent.joinall(streams, timeout=STREAM_WAIT, raise_error=True)
        for collector in collectors:
            got = collector.result()
            client = collector.client
            state = (
                f"client {client.id}: resumed {client.resumed}, recovered {client.recovered}, "
                f"reconnects {client.reconnects}, last drop {client.last_drop}, "
                f"told lost {collector.lost}"
            )
            for n in range(senders):
                tag = f"s{n}:"
                mine = [m for m in got if m.startswith(tag)]
                missing = sorted(set(expected(f"s{n}", per_sender)) - set(mine))
                assert mine == expected(f"s{n}", per_sender), (state, tag, missing)
            assert len(got) == senders * (per_sender + 1)  # 0 lost, 0 duplicated
            assert collector.lost == []
        assert all(client.last_drop == 1001 for client in clients)
        assert all(client.reconnects == 1 and client.recovered for client in clients)
        for client in clients:
            client.close(timeout=WAIT)
    for emitter in emitters:
        emitter.disconnect()
