"""Per-connection rate limits (geo_ws.io.ratelimit): the bucket's arithmetic, then floods
at five times the limit from real clients to a real server.

Accuracy: a client paced at 5x the rate for ``T`` seconds should get ``burst + rate * T``
messages through. The server sees them arrive spread over ``T`` give or take the
scheduling delays of one loaded process (client and server share it), which stay well
under 0.25 s here; so the tolerance is a quarter second's worth of the rate, plus 2.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, request

from geo_ws import WebSocket
from geo_ws.flask.connector import WebSocketConnector
from geo_ws.io.ratelimit import RateLimit, TokenBucket
from geo_ws.protocol.frames import Opcode
from geo_ws.protocol.machine import Close, Message, Pong

from ..helpers import RawClient


@pytest.fixture
def app() -> Flask:
    return Flask(__name__)


#: Seconds' worth of the rate by which a flood's count may miss (see the module docstring).
SLACK = 0.25


# -- the arithmetic -------------------------------------------------------------------------


def test_a_bucket_starts_full_then_fills_at_its_rate() -> None:
    bucket = TokenBucket(10, burst=2.0)  # holds 20
    now = time.monotonic()
    assert sum(bucket.take(1, now) for _ in range(25)) == 20
    assert not bucket.take(1, now + 0.05)  # half a token came
    # A whole one (and a little: 0.1 s later in floats of a large clock is 0.0999...).
    assert bucket.take(1, now + 0.101)
    assert sum(bucket.take(1, now + 100) for _ in range(25)) == 20  # never more than full


def test_a_message_beyond_the_bucket_passes_when_full_and_leaves_a_debt() -> None:
    bucket = TokenBucket(1000, burst=1.0)
    now = time.monotonic()
    assert bucket.take(3000, now)  # full: let through, 2000 in debt
    assert not bucket.take(1, now + 1.5)  # still 500 short
    assert bucket.take(1, now + 2.01)  # paid back: 3000 bytes took 2 s more


def test_the_bytes_of_text_are_its_utf8_size() -> None:
    limit = RateLimit(None, 100, action="drop")
    assert limit.admit("é" * 50)  # 100 bytes in 50 characters
    assert not limit.admit("a")
    assert limit.dropped == 1


def test_a_message_refused_for_its_bytes_takes_no_message_token() -> None:
    limit = RateLimit(2, 10, action="drop")
    assert limit.admit(b"0123456789")
    assert not limit.admit(b"x")  # bytes exhausted
    assert limit.admit(b"")  # the second message token is still there
    assert not limit.admit(b"")
    assert limit.dropped == 2


def test_no_rate_no_limit_and_bad_settings_fail() -> None:
    assert not RateLimit(None, None).limits
    with pytest.raises(ValueError, match="'close' or 'drop'"):
        RateLimit(1, None, action="ignore")
    with pytest.raises(ValueError, match="positive"):
        RateLimit(0, None)


def test_settings_come_from_the_endpoint_or_the_apps_config(app: Flask) -> None:
    app.config["GEO_WS_MAX_MESSAGES_PER_SECOND"] = 30
    app.config["GEO_WS_RATE_LIMIT_ACTION"] = "drop"
    endpoint = WebSocket(app, "/ws", rate_limit_burst=2.0)
    options = endpoint.options(app)
    assert (options.max_messages_per_second, options.rate_limit_burst) == (30, 2.0)
    assert options.rate_limit_action == "drop"
    assert options.max_bytes_per_second is None
    with pytest.raises(ValueError, match="'close' or 'drop'"):
        WebSocket(app, "/bad", rate_limit_action="block")


# -- floods from real clients ---------------------------------------------------------------


def echo_app(app: Flask, **limits: Any) -> tuple[Flask, list[WebSocketConnector]]:
    """``/ws`` echoes every message it lets through; the connectors land in the list."""
    clients: list[WebSocketConnector] = []
    endpoint = WebSocket(app, "/ws", ping_interval=None, **limits)

    @endpoint.on("connect")
    def connect(ws: WebSocketConnector) -> None:
        clients.append(ws)

    @endpoint.on("message")
    def message(msg: str) -> str:
        return msg

    return app, clients


def flood(client: RawClient, rate: float, seconds: float, text: str = "x") -> tuple[int, float]:
    """Send ``text`` paced at ``rate`` per second for ``seconds`` (less if the server
    closes); returns how many were sent and over how long."""
    count = int(rate * seconds)
    started = time.monotonic()
    for i in range(count):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            client.send_text(text)
        except OSError:  # closed by the server
            return i, time.monotonic() - started
    return count, time.monotonic() - started


def echoes_until_pong(client: RawClient) -> int:
    """Count the echoes up to the Pong of a Ping sent now: the server handles what it
    receives in order, so every message sent before has been let through or dropped."""
    client.send_frame(Opcode.PING, b"end")
    echoes = 0
    while True:
        event = client.recv_event()
        if isinstance(event, Pong):
            assert event.payload == b"end"
            return echoes
        assert isinstance(event, Message), event
        echoes += 1


def test_drop_mode_lets_the_rate_through_a_flood_at_five_times_it(
    app: Flask, serve: Callable[[Flask], str], caplog: pytest.LogCaptureFixture
) -> None:
    rate = 50
    app, clients = echo_app(app, max_messages_per_second=rate, rate_limit_action="drop")
    client = RawClient(serve(app), "/ws")
    assert client.status == 101
    with caplog.at_level(logging.WARNING, "geo_ws"):
        sent, spent = flood(client, 5 * rate, 2.0)
        echoed = echoes_until_pong(client)
    expected = rate + rate * spent  # the burst (1 s), then the rate
    assert abs(echoed - expected) <= SLACK * rate + 2, (echoed, expected)
    limit = clients[0]._connection.rate_limit
    assert limit is not None and limit.dropped == sent - echoed  # every message counted
    warnings = [r for r in caplog.records if "over its rate limit" in r.getMessage()]
    assert len(warnings) == 1  # one per 10 s, not one per message


def test_close_mode_closes_with_1008_once_the_burst_is_spent(
    app: Flask, serve: Callable[[Flask], str]
) -> None:
    rate = 40
    app, _ = echo_app(app, max_messages_per_second=rate)
    client = RawClient(serve(app), "/ws")
    flood(client, 5 * rate, 1.0)  # the server closes after about a quarter of it
    echoed = 0
    while True:
        event = client.recv_event()
        if isinstance(event, Close):
            break
        assert isinstance(event, Message), event
        echoed += 1
    assert (event.code, event.reason) == (1008, "rate limit exceeded")
    # The bucket (rate) drains at 5 * rate - rate per second: empty after 1/4 s, having
    # let rate * 1.25 through.
    assert abs(echoed - 1.25 * rate) <= SLACK * rate + 2, echoed
    client.send_close(1008)
    assert client.at_eof()


def test_byte_rate_counts_utf8_and_drops_beyond_it(
    app: Flask, serve: Callable[[Flask], str]
) -> None:
    rate = 20_000  # bytes per second: 20 of the messages below
    app, clients = echo_app(app, max_bytes_per_second=rate, rate_limit_action="drop")
    client = RawClient(serve(app), "/ws")
    text = "é" * 500  # 1000 bytes, 500 characters
    sent, spent = flood(client, 100, 2.0, text)  # 5x: 100 000 bytes per second
    echoed = echoes_until_pong(client)
    expected = (rate + rate * spent) / 1000
    assert abs(echoed - expected) <= SLACK * rate / 1000 + 2, (echoed, expected)
    limit = clients[0]._connection.rate_limit
    assert limit is not None and limit.dropped == sent - echoed


def test_gevent_websocket_style_apps_get_the_rate_limit_of_the_apps_config(
    app: Flask, serve: Callable[[Flask], str]
) -> None:
    rate = 40
    app.config["GEO_WS_MAX_MESSAGES_PER_SECOND"] = rate

    @app.route("/legacy", websocket=True)
    def legacy() -> str:
        ws = request.environ["wsgi.websocket"]
        while (message := ws.receive()) is not None:
            ws.send(message)
        return ""

    client = RawClient(serve(app), "/legacy")
    assert client.status == 101
    flood(client, 5 * rate, 1.0)
    echoed = 0
    while not isinstance(event := client.recv_event(), Close):
        assert isinstance(event, Message), event
        echoed += 1
    assert (event.code, event.reason) == (1008, "rate limit exceeded")
    assert abs(echoed - 1.25 * rate) <= SLACK * rate + 2, echoed
