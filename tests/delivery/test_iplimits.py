"""Limits per client address (geo_ws.delivery.iplimits): 429 before the 101, in one
process, behind ProxyFix, and across three gunicorn workers sharing a real Redis,
including after a worker is killed with SIGKILL."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable

import gevent
import pytest
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from geo_ws import WebSocket
from geo_ws.delivery.broker import RedisBroker
from geo_ws.delivery.iplimits import SWEEP_AT, IPLimits, RedisIPLimits
from tests.helpers import WAIT, RawClient
from tests.live_apps import limits as live
from tests.live_apps.redis_server import RedisServer, free_port, namespace, redis_server
from tests.server.test_gunicorn import assert_no_errors, gunicorn

__all__ = ["redis_server"]  # the fixture, imported for pytest

RETRY_AFTER = re.compile(r"^Retry-After: (\d+)\r?$", re.MULTILINE | re.IGNORECASE)


def address() -> str:
    """A client address of the test's own (tests share one Redis)."""
    return ".".join(["10"] + [str(random.randrange(1, 255)) for _ in range(3)])


def handshake(server: str, path: str, client: str | None = None) -> RawClient:
    """A handshake from ``client`` (as ``X-Forwarded-For``); a 101 is read past its greeting."""
    ws = RawClient(server, path, {"X-Forwarded-For": client} if client else None)
    if ws.status == 101:
        ws.greeting = ws.recv(skip_pings=True)  # type: ignore[attr-defined]
    return ws


def handshakes_at_once(server: str, path: str, client: str, count: int) -> list[RawClient]:
    """``count`` handshakes from ``client``, all in flight together."""
    jobs = [gevent.spawn(handshake, server, path, client) for _ in range(count)]
    gevent.joinall(jobs, timeout=WAIT, raise_error=True)
    assert all(job.successful() for job in jobs), "handshakes still in flight"
    return [job.value for job in jobs]


def on_every_worker(server: str, path: str, client: str, workers: int = 3) -> list[RawClient]:
    """Admitted handshakes from ``client`` until every worker has one (at most 6): each
    client keeps its worker busy, unable to accept, while the next handshake is made."""
    clients: list[RawClient] = []
    while len({pid_of(ws) for ws in clients}) < workers:
        assert len(clients) < 6, "the workers did not take turns"
        ws = handshake(server, path, client)
        assert ws.status == 101
        clients.append(ws)
        ws.send_text("spin 1.0")
    for ws in clients:
        assert ws.recv(skip_pings=True) == "spun"
    return clients


def close(ws: RawClient) -> None:
    """Close cleanly: the server's end of the connection (and its release) follows."""
    ws.send_close(1000)
    assert ws.recv_close().code == 1000
    assert ws.at_eof()


def admitted_within(server: str, path: str, client: str, timeout: float) -> tuple[RawClient, float]:
    """Try handshakes from ``client`` until one gets 101 (each refusal is a 429);
    returns the client admitted and how long it took. (A count that recovers by expiry
    has no event to wait for.)"""
    started = time.monotonic()
    while True:
        ws = handshake(server, path, client)
        if ws.status == 101:
            return ws, time.monotonic() - started
        assert ws.status == 429
        ws.close()
        assert time.monotonic() - started < timeout, f"still refused after {timeout} s"
        gevent.sleep(0.1)


# -- one process ----------------------------------------------------------------------------


def limited_app(
    broker: RedisBroker | None = None, ping_interval: float | None = None, **limits: int
) -> Flask:
    """``/ws`` behind ProxyFix, with ``limits`` (counted with ``broker``, refreshed every
    ``ping_interval``); greets with "hi"."""
    app = Flask(__name__)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    endpoint = WebSocket(app, "/ws", ping_interval=ping_interval, broker=broker, **limits)

    @endpoint.on("connect")
    def connect() -> str:
        return "hi"

    return app


def test_connections_per_address_get_429_before_the_101_and_recover_on_close(
    serve: Callable[[Flask], str],
) -> None:
    server = serve(limited_app(max_connections_per_ip=2))
    first, second = handshake(server, "/ws", "10.0.0.1"), handshake(server, "/ws", "10.0.0.1")
    assert (first.status, second.status) == (101, 101)
    refused = handshake(server, "/ws", "10.0.0.1")
    assert refused.status == 429
    assert not RETRY_AFTER.search(refused.response_head)  # nobody knows when one closes
    # ProxyFix's address counts, not the socket's (127.0.0.1 for all three).
    assert handshake(server, "/ws", "10.0.0.2").status == 101
    close(first)
    admitted_within(server, "/ws", "10.0.0.1", WAIT)
    assert handshake(server, "/ws", "10.0.0.1").status == 429


def test_handshakes_per_address_and_minute_get_429_with_retry_after(
    serve: Callable[[Flask], str],
) -> None:
    server = serve(limited_app(max_handshakes_per_ip_per_minute=3))
    statuses = []
    for _ in range(5):
        ws = handshake(server, "/ws", "10.0.0.3")
        statuses.append(ws.status)
        ws.close()  # closed or not, each handshake counts
    assert statuses == [101, 101, 101, 429, 429]
    match = RETRY_AFTER.search(handshake(server, "/ws", "10.0.0.3").response_head)
    assert match is not None and 1 <= int(match.group(1)) <= 60
    assert handshake(server, "/ws", "10.0.0.4").status == 101  # another address


def test_without_proxyfix_the_socket_address_counts(serve: Callable[[Flask], str]) -> None:
    app = Flask(__name__)  # served by the direct lane: no middleware, no hooks
    WebSocket(app, "/ws", ping_interval=None, max_connections_per_ip=1)
    server = serve(app)
    assert RawClient(server, "/ws", {"X-Forwarded-For": "10.0.0.6"}).status == 101
    # X-Forwarded-For means nothing to an app that does not trust it: both are 127.0.0.1.
    assert RawClient(server, "/ws", {"X-Forwarded-For": "10.0.0.7"}).status == 429


def test_the_in_process_count_frees_each_slot_once() -> None:
    limits = IPLimits(1, None)
    release = limits.admit("a")
    with pytest.raises(Exception, match="429"):
        limits.admit("a")
    release()
    release()
    assert limits.open_count("a") == 0
    limits.admit("a")
    assert limits.open_count("a") == 1


def test_the_in_process_handshake_count_forgets_quiet_addresses() -> None:
    limits = IPLimits(None, 1)
    limits.window = 0.05
    for i in range(SWEEP_AT - 1):
        limits.admit(f"10.1.{i // 250}.{i % 250}")
    with pytest.raises(Exception, match="429"):
        limits.admit("10.1.0.0")  # still within its window
    time.sleep(0.1)
    limits.admit("10.2.0.0")  # the thousandth address: a sweep, which keeps only it
    assert list(limits._handshakes) == ["10.2.0.0"]
    limits.admit("10.1.0.0")  # forgotten, so admitted


# -- Redis ----------------------------------------------------------------------------------


def test_two_apps_on_one_redis_share_the_count_and_keep_live_connections_counted(
    serve: Callable[[Flask], str], redis_server: RedisServer
) -> None:
    space = namespace()
    servers = [
        serve(
            limited_app(
                RedisBroker(redis_server.url, namespace=space), 0.2, max_connections_per_ip=2
            )
        )
        for _ in range(2)
    ]
    client = address()
    first = handshake(servers[0], "/ws", client)
    assert first.status == 101
    assert handshake(servers[1], "/ws", client).status == 101
    assert [handshake(server, "/ws", client).status for server in servers] == [429, 429]
    # A ticket lives 0.5 s (2.5 keepalive intervals) past its last refresh: three lifetimes
    # later, the live connections are still counted.
    gevent.sleep(1.5)
    limits = RedisIPLimits(2, None, RedisBroker(redis_server.url).redis, f"{space}:limits:/ws")
    assert limits.open_count(client) == 2
    assert handshake(servers[1], "/ws", client).status == 429
    close(first)
    admitted_within(servers[1], "/ws", client, WAIT)


def test_when_redis_cannot_be_read_the_limits_admit_and_log_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A handshake never gets here without Redis (the broker's subscription answers 503
    # first); this is Redis failing between the two: the limits must not lock clients out.
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0")
    limits = RedisIPLimits(1, None, broker.redis, "test:limits:/ws")
    with caplog.at_level(logging.ERROR, "geo_ws"):
        releases = [limits.admit("10.0.0.5") for _ in range(2)]
    assert all(callable(release) for release in releases)
    assert any("cannot check the limits" in record.getMessage() for record in caplog.records)


# -- three gunicorn workers -----------------------------------------------------------------


def test_across_three_workers_the_connection_count_is_exact_and_recovers_after_sigkill(
    redis_server: RedisServer,
) -> None:
    app = "tests.live_apps.limits:app"
    broker = ("-e", f"GEO_WS_BROKER_URL={redis_server.url}")
    with gunicorn(app, *broker, workers=3) as (server, host):
        client = address()
        limit = live.MAX_CONNECTIONS
        admitted = on_every_worker(host, "/conns", client)  # each worker counts some
        clients = handshakes_at_once(host, "/conns", client, limit)
        spread = len(admitted)
        assert Counter(ws.status for ws in clients) == {101: limit - spread, 429: spread}
        admitted += [ws for ws in clients if ws.status == 101]
        pids = Counter(pid_of(ws) for ws in admitted)
        # Clients that close free their slots at once (once the server is done with them)...
        for ws in admitted[:2]:
            close(ws)
            pids[pid_of(ws)] -= 1
        for _ in range(2):
            ws, _ = admitted_within(host, "/conns", client, WAIT)
            admitted.append(ws)
            pids[pid_of(ws)] += 1
        assert handshake(host, "/conns", client).status == 429
        # ... and a worker killed with SIGKILL frees nothing, but its slots expire.
        victim, held = max(pids.items(), key=lambda item: item[1])
        os.kill(victim, signal.SIGKILL)
        recovered = [admitted_within(host, "/conns", client, 10.0)[1] for _ in range(held)]
        assert handshake(host, "/conns", client).status == 429  # exactly `held` came back
        # A ticket lives 2.5 refreshes of 1 s (the keepalive interval) past its last.
        assert recovered[0] <= 2.5 * 1.0 + 1.0
        assert all(ws.at_eof() for ws in admitted if pid_of(ws) == victim)
    # gunicorn logs the worker it lost as an error: nothing else may be one.
    server.stderr.lines = [line for line in server.stderr.lines if str(victim) not in line]
    assert_no_errors(server)


def pid_of(ws: RawClient) -> int:
    """The pid of the worker that greeted ``ws``."""
    pid: int = json.loads(ws.greeting)["pid"]  # type: ignore[attr-defined]
    return pid


def test_across_three_workers_the_handshake_rate_is_exact(redis_server: RedisServer) -> None:
    app = "tests.live_apps.limits:app"
    with gunicorn(app, "-e", f"GEO_WS_BROKER_URL={redis_server.url}", workers=3) as (server, host):
        client = address()
        limit = live.MAX_HANDSHAKES
        made = len(on_every_worker(host, "/handshakes", client))  # each worker counts some
        results = handshakes_at_once(host, "/handshakes", client, limit - made + 5)
        assert Counter(ws.status for ws in results) == {101: limit - made, 429: 5}
        for ws in results:
            if ws.status == 429:
                match = RETRY_AFTER.search(ws.response_head)
                assert match is not None and 1 <= int(match.group(1)) <= 60
        assert handshake(host, "/handshakes", address()).status == 101
    assert_no_errors(server)
