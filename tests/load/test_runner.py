"""The runner: the clock and its timeline, the count bound, the warm-up, error kinds."""

from __future__ import annotations

from flask import Flask

from geo_ws.load.options import LoadOptions
from geo_ws.load.report import progress_line, summarize
from geo_ws.load.runner import error_kind, run
from geo_ws.server.builtin import Server

from .helpers import App, figures


def test_echo_closed_loops_with_a_timeline(address: str, app: App) -> None:
    ticks: list[str] = []
    options = LoadOptions(f"ws://{address}/echo", connections=4, duration=1.0, interval=0.25)
    part = run(options, on_tick=lambda runner: ticks.append(progress_line(runner)))
    summary = summarize(options, [part])
    echo = summary["steps"]["echo"]
    assert summary["main_step"] == "echo"
    assert echo["count"] == app.echoed > 100
    assert 0 < echo["min_ms"] <= echo["p50_ms"] <= echo["p99_ms"] <= echo["max_ms"]
    assert summary["steps"]["connect"]["count"] == 4
    assert summary["connections"] == {"target": 4, "opened": 4, "open_at_end": 4}
    assert summary["errors"] == {"total": 0, "by_kind": {}}
    assert 0.9 < summary["duration_s"] < 1.5
    timeline = summary["timeline"]
    assert [round(point["t"] * 4) for point in timeline] == [1, 2, 3, 4]
    assert sum(point["steps"]["echo"]["count"] for point in timeline) <= echo["count"]
    assert all(point["steps"]["echo"]["rate_per_s"] > 0 for point in timeline)
    assert 0 < summary["tool_cpu"]["percent_of_one_core"][0] <= 110
    assert len(ticks) == 3 and all(" echo " in line and "/s" in line for line in ticks)
    assert summary["exit_status"] == 0


def test_echo_count_bound_binary_and_warmup(address: str, app: App) -> None:
    summary = figures(
        LoadOptions(f"ws://{address}/echo", connections=3, messages=150, binary=True, size=1000)
    )
    assert summary["steps"]["echo"]["count"] == app.echoed == 150
    assert summary["errors"]["total"] == 0
    warm = figures(LoadOptions(f"ws://{address}/echo", connections=2, duration=0.5, warmup=0.5))
    # The warm-up's echoes are not counted, its handshakes are.
    assert 0 < warm["steps"]["echo"]["count"] < app.echoed - 150
    assert warm["steps"]["connect"]["count"] == 2
    assert 0.4 < warm["duration_s"] < 0.8


def test_refused_connections_fail_the_run() -> None:
    server = Server(("127.0.0.1", 0), Flask(__name__), log=None)
    server.start()
    port = server.address[1]
    server.shutdown(timeout=1)
    summary = figures(LoadOptions(f"ws://127.0.0.1:{port}/echo", connections=2, duration=0.3))
    assert summary["errors"]["by_kind"]["refused"] >= 2
    assert summary["exit_status"] == 1  # nothing worked


def test_error_kinds() -> None:
    from geo_ws.exceptions import ConnectionClosedError, HandshakeError

    assert error_kind(ConnectionRefusedError()) == "refused"
    assert error_kind(TimeoutError()) == "timeout"
    assert error_kind(ConnectionClosedError(1011)) == "closed 1011"
    assert error_kind(HandshakeError(403, "no")) == "handshake 403"
    assert error_kind(ValueError()) == "ValueError"
