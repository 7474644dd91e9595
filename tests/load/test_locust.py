"""geo_ws.locust: Locust runs examples/locustfile.py headless against a geo_ws server,
and a WebSocketUser's steps become Locust request events (failures included)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from locust import task
from locust.env import Environment
from locust.exception import RescheduleTask

import examples.robyn_tour
from geo_ws.locust import WebSocketUser
from tests.live_apps.process import ROOT, child_env

Serve = Callable[[Any], str]  # the serve fixture of conftest.py


def test_locust_headless_records_every_step_without_failures(serve: Serve) -> None:
    address = serve(examples.robyn_tour.app)
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "examples/locustfile.py", "--headless"]
        + ["-u", "8", "-r", "8", "-t", "3s", "--host", f"ws://{address}"]
        + ["--only-summary", "--json", "--loglevel", "WARNING"],
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = {(row["method"], row["name"]): row for row in json.loads(result.stdout)}
    assert set(rows) == {
        ("CONNECT", "/web_socket"),
        ("RECV", "greeting"),
        ("REQUEST", "/web_socket"),
        ("PING", "/web_socket"),
        ("CLOSE", "/web_socket"),
    }
    assert rows["CONNECT", "/web_socket"]["num_requests"] == 8
    assert rows["CLOSE", "/web_socket"]["num_requests"] == 8
    assert rows["REQUEST", "/web_socket"]["num_requests"] > 20
    assert all(row["num_failures"] == 0 for row in rows.values())


class Tour(WebSocketUser):
    """A user driven by hand in these tests (Locust never schedules it here)."""

    @task
    def nothing(self) -> None:
        pass


@pytest.fixture
def user(serve: Serve) -> Iterator[tuple[Tour, list[dict[str, Any]]]]:
    address = serve(examples.robyn_tour.app)
    environment = Environment(user_classes=[Tour], host=f"http://{address}")
    events: list[dict[str, Any]] = []
    environment.events.request.add_listener(lambda **event: events.append(event))
    tour = Tour(environment)
    yield tour, events
    tour.on_stop()


def test_steps_fire_request_events(user: tuple[Tour, list[dict[str, Any]]]) -> None:
    tour, events = user
    assert tour.client.base_url.startswith("ws://")  # an http:// host is taken as ws://
    tour.client.connect("/web_socket")
    assert tour.client.recv(expect="Connected to ws") == "Connected to ws"
    tour.client.send("hi", name="hello")
    assert tour.client.recv() == "Hello world, from ws"
    assert tour.client.ping() > 0
    tour.on_stop()
    steps = [(e["request_type"], e["name"], e["exception"]) for e in events]
    assert steps == [
        ("CONNECT", "/web_socket", None),
        ("RECV", "/web_socket", None),
        ("SEND", "hello", None),
        ("RECV", "/web_socket", None),
        ("PING", "/web_socket", None),
        ("CLOSE", "/web_socket", None),
    ]
    assert events[2]["response_length"] == 2
    assert all(e["response_time"] >= 0 for e in events)


def test_a_failed_step_is_a_failure_and_ends_the_task(
    user: tuple[Tour, list[dict[str, Any]]],
) -> None:
    tour, events = user
    tour.client.connect("/web_socket")
    with pytest.raises(RescheduleTask):
        tour.client.recv(expect="something else")
    assert events[-1]["request_type"] == "RECV"
    assert "expected 'something else'" in str(events[-1]["exception"])
    with pytest.raises(RescheduleTask):
        tour.client.recv(timeout=0.05)
    assert isinstance(events[-1]["exception"], TimeoutError)


def test_a_lost_connection_is_reopened_by_the_next_step(
    user: tuple[Tour, list[dict[str, Any]]],
) -> None:
    tour, events = user
    tour.client.connect("/close")
    tour.client.send("disconnect")  # the endpoint answers, then closes
    assert tour.client.recv() == "Closing connection"
    with pytest.raises(RescheduleTask):
        tour.client.recv()
    assert events[-1]["exception"].code == 1000
    assert tour.client.request("again") == "Message received"
    assert [e["request_type"] for e in events[-2:]] == ["CONNECT", "REQUEST"]
