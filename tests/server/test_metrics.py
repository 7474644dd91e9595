"""Prometheus metrics, scraped from real servers while real clients run: geo_ws's
server in this process, and gunicorn with three workers sharing a multiprocess
directory; the numbers must be what the clients saw."""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections import Counter
from pathlib import Path

import gevent
import pytest

# Imported before any test sets PROMETHEUS_MULTIPROC_DIR: this process keeps its
# metrics in memory whatever the gunicorn test sets for its subprocesses.
from prometheus_client.parser import text_string_to_metric_families

from geo_ws.protocol.frames import Opcode
from geo_ws.protocol.machine import Ping
from geo_ws.server.metrics import SAMPLE_EVERY
from tests.helpers import WAIT, RawClient, http_get
from tests.live_apps.metrics import create_app
from tests.live_apps.redis_server import RedisServer
from tests.server.test_gunicorn import gunicorn

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

#: Message sizes that take each length encoding of a frame header.
SIZES = (1, 125, 126, 300, 70_000)


def scrape(address: str) -> Samples:
    """GET /metrics, parsed: (sample name, sorted labels) -> value."""
    status, body = http_get(address, "/metrics")
    assert status == 200, body
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 if absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(address: str, expected: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
    """Scrape until every sample in ``expected`` has its value (bounded)."""
    deadline = gevent.get_hub().loop.now() + 3 * WAIT
    while True:
        samples = scrape(address)
        wrong = {
            key: samples.get(key, 0.0)
            for key, want in expected.items()
            if samples.get(key, 0.0) != want
        }
        if not wrong:
            return
        assert gevent.get_hub().loop.now() < deadline, f"wanted {expected}, got {wrong}"
        gevent.sleep(0.1)


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The key of a sample in :data:`Samples`."""
    return name, tuple(sorted(labels.items()))


def frame_size(payload: int, *, masked: bool) -> int:
    """The size of one frame on the wire (a client's frames are masked)."""
    extended = 0 if payload < 126 else 2 if payload < 65536 else 8
    return 2 + extended + (4 if masked else 0) + payload


def test_a_scrape_shows_what_the_clients_of_the_builtin_server_saw(serve) -> None:
    prefix = f"/{uuid.uuid4().hex[:8]}"
    address = serve(create_app(prefix))
    echo = prefix + "/echo"
    clients = [RawClient(address, echo) for _ in range(4)]
    sent = received = sent_bytes = received_bytes = 0  # as the server counts them
    for client in clients:
        assert client.status == 101
        pid = client.recv()
        sent, sent_bytes = sent + 1, sent_bytes + frame_size(len(pid), masked=False)
        for size in SIZES:
            client.send_text("x" * size)
            assert client.recv() == "x" * size
            received += 1
            received_bytes += frame_size(size, masked=True)
            sent, sent_bytes = sent + 1, sent_bytes + frame_size(size, masked=False)
    refused = RawClient(address, echo, {"Sec-WebSocket-Version": "8"})  # 13 and 8
    assert refused.status >= 400
    e = {"endpoint": echo}
    wait_for(
        address,
        {
            key("geo_ws_open_connections", **e): 4,
            key("geo_ws_handshakes_total", status="101", **e): 4,
            key("geo_ws_handshakes_total", status=str(refused.status), **e): 1,
            key("geo_ws_messages_received_total", **e): received,
            key("geo_ws_messages_sent_total", **e): sent,
            key("geo_ws_received_bytes_total", **e): received_bytes,
            key("geo_ws_sent_bytes_total", **e): sent_bytes,
            key("geo_ws_handler_duration_seconds_count", event="message", **e): received
            // SAMPLE_EVERY,
            key("geo_ws_handler_duration_seconds_count", event="connect", **e): 4,
        },
    )

    # Closes by code: the client's 1000 and 4001, the server's 4002, a lost one (1006).
    for client, code in zip(clients[:2], (1000, 4001), strict=True):
        client.send_close(code)
        assert client.recv_close().code == code
        received_bytes += frame_size(2, masked=True)
        sent_bytes += frame_size(2, masked=False)
    clients[2].send_text("quit")
    assert clients[2].recv_close().code == 4002
    clients[2].send_close(4002)
    received, received_bytes = received + 1, received_bytes + frame_size(4, masked=True)
    received_bytes += frame_size(2, masked=True)
    sent_bytes += frame_size(2 + len("asked to"), masked=False)
    clients[3].close()
    for client in clients[:3]:
        assert client.at_eof()
    wait_for(
        address,
        {
            key("geo_ws_open_connections", **e): 0,
            key("geo_ws_closes_total", code="1000", **e): 1,
            key("geo_ws_closes_total", code="4001", **e): 1,
            key("geo_ws_closes_total", code="4002", **e): 1,
            key("geo_ws_closes_total", code="1006", **e): 1,
            key("geo_ws_messages_received_total", **e): received,
            key("geo_ws_messages_sent_total", **e): sent,
            key("geo_ws_received_bytes_total", **e): received_bytes,
            key("geo_ws_sent_bytes_total", **e): sent_bytes,
            key("geo_ws_handler_duration_seconds_count", event="close", **e): 0,  # none
            key("geo_ws_slow_consumer_closes_total", **e): 0,
        },
    )


def test_ping_round_trips_and_slow_consumers_are_counted(serve) -> None:
    prefix = f"/{uuid.uuid4().hex[:8]}"
    app = create_app(prefix)
    app.config["GEO_WS_MAX_OUTBOX_SIZE"] = 2**20
    address = serve(app)
    pinged = RawClient(address, prefix + "/ping")
    pongs = 0
    with gevent.Timeout(1.0, False):  # pings come every 0.2 s: answer them for 1 s
        while True:
            ping = pinged.recv_event()
            assert isinstance(ping, Ping)
            pinged.send_frame(Opcode.PONG, ping.payload)
            pongs += 1
    assert pongs >= 3
    wait_for(
        address, {key("geo_ws_ping_round_trip_seconds_count", endpoint=prefix + "/ping"): pongs}
    )
    assert (
        value(scrape(address), "geo_ws_ping_round_trip_seconds_sum", endpoint=prefix + "/ping") < 1
    )

    # A client that never reads while the server echoes to it: its outbox grows (the
    # gauge shows it), then it is closed with 1008.
    echo = prefix + "/echo"
    slow = RawClient(address, echo)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    most_waiting = 0.0
    for _ in range(100):  # 10 MB: past the 1 MiB outbox and the kernel's buffers
        try:
            slow.send_frame(Opcode.BINARY, b"y" * 100_000)
        except OSError:
            break  # the server gave up waiting for our Close
        samples = scrape(address)
        most_waiting = max(most_waiting, value(samples, "geo_ws_outbox_bytes", endpoint=echo))
        if value(samples, "geo_ws_slow_consumer_closes_total", endpoint=echo):
            break
    assert 0 < most_waiting <= 2**20
    wait_for(
        address,
        {
            key("geo_ws_slow_consumer_closes_total", endpoint=echo): 1,
            key("geo_ws_closes_total", code="1008", endpoint=echo): 1,
        },
    )


def test_three_gunicorn_workers_add_up_and_a_killed_one_leaves_the_gauge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with gunicorn("tests.live_apps.metrics:app", workers=3) as (server, address):
        clients = [RawClient(address, "/echo") for _ in range(12)]
        pids = [int(client.recv()) for client in clients]
        e = {"endpoint": "/echo"}
        wait_for(address, {key("geo_ws_open_connections", **e): 12})

        # Load: every client sends 50 messages and reads their echoes, while we scrape.
        def chat(client: RawClient) -> None:
            for i in range(50):
                client.send_text(f"message {i}")
                assert client.recv() == f"message {i}"

        chats = [gevent.spawn(chat, client) for client in clients]
        seen = []
        while not all(chat.dead for chat in chats):
            seen.append(value(scrape(address), "geo_ws_messages_received_total", **e))
            gevent.sleep(0.05)
        gevent.joinall(chats, raise_error=True)
        assert seen == sorted(seen) and seen[-1] <= 600
        sizes = sum(frame_size(len(f"message {i}"), masked=True) for i in range(50))
        pid_bytes = sum(frame_size(len(str(pid)), masked=False) for pid in pids)
        wait_for(
            address,
            {
                key("geo_ws_handshakes_total", status="101", **e): 12,
                key("geo_ws_messages_received_total", **e): 600,
                key("geo_ws_messages_sent_total", **e): 612,
                key("geo_ws_received_bytes_total", **e): 12 * sizes,
                key("geo_ws_sent_bytes_total", **e): 12 * (sizes - 50 * 4) + pid_bytes,
                key("geo_ws_handler_duration_seconds_count", event="message", **e): sum(
                    50 * count // SAMPLE_EVERY for count in Counter(pids).values()
                ),
            },
        )

        # Four close, then a worker dies with SIGKILL: its connections leave the gauge.
        for client in clients[:4]:
            client.send_close(1000)
            assert client.recv_close().code == 1000
        wait_for(
            address,
            {
                key("geo_ws_open_connections", **e): 8,
                key("geo_ws_closes_total", code="1000", **e): 4,
            },
        )
        per_worker = Counter(pids[4:])
        victim, lost = per_worker.most_common(1)[0]
        os.kill(victim, signal.SIGKILL)
        for client, pid in zip(clients[4:], pids[4:], strict=True):
            if pid == victim:
                assert client.at_eof()
        wait_for(address, {key("geo_ws_open_connections", **e): 8 - lost})
        assert len(per_worker) > 1 or lost == 8
    assert not [line for line in server.stderr.lines if "Traceback" in line]


def test_broker_counters_add_up_across_gunicorn_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    redis = RedisServer()  # its own: this test kills it
    try:
        with gunicorn(
            "tests.live_apps.metrics:app", "-e", f"GEO_WS_BROKER_URL={redis.url}", workers=3
        ) as (server, address):
            clients = [RawClient(address, "/echo") for _ in range(9)]
            pids = [int(client.recv()) for client in clients]
            workers = len(set(pids))  # those with a client listen to the broker
            for i in range(5):
                clients[0].send_text(f"all:news {i}")
            for client in clients:
                assert [client.recv() for _ in range(5)] == [f"news {i}" for i in range(5)]
            wait_for(
                address,
                {
                    key("geo_ws_broker_published_total"): 5,
                    key("geo_ws_broker_received_total"): 5 * (workers - 1),
                    key("geo_ws_broker_gaps_total"): 0,
                    key("geo_ws_broker_missed_total"): 0,
                    key("geo_ws_broker_publish_failed_total"): 0,
                    key("geo_ws_messages_sent_total", endpoint="/echo"): 9 + 5 * 9,
                },
            )

            # Redis gone: the broadcast reaches the sender's worker only, and is counted lost.
            redis.kill()
            clients[0].send_text("all:unheard")
            here = [client for client, pid in zip(clients, pids, strict=True) if pid == pids[0]]
            for client in here:
                assert client.recv() == "unheard"
            for client in clients:  # the others got nothing before their echo
                client.send_text("after")
                assert client.recv() == "after"
            wait_for(address, {key("geo_ws_broker_publish_failed_total"): 1})
            assert value(scrape(address), "geo_ws_broker_published_total") == 5
    finally:
        redis.kill()


def test_several_gunicorn_workers_without_a_multiprocess_dir_answer_500(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with gunicorn("tests.live_apps.metrics:app", workers=2) as (server, address):
        status, body = http_get(address, "/metrics")
        assert status == 500
        assert "2 workers, but PROMETHEUS_MULTIPROC_DIR is not set" in body
