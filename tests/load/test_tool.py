"""``geo-ws load``: every scenario against a real geo_ws server on loopback, the figures,
the JSON, the SLO exit status both ways, a scenario script, the plot, Ctrl-C and
``--processes``.

Scenarios run in this process through :func:`geo_ws.load.tool.run` (short runs, few
connections); the command line runs as ``python -m geo_ws load`` subprocesses.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import pytest
from flask import Flask
from gevent.event import Event

from geo_ws import WebSocket
from geo_ws.load.tool import (
    Options,
    Part,
    Runner,
    cpu_warning,
    error_kind,
    main,
    merge,
    percentile,
    progress_line,
    run,
    summarize,
)
from geo_ws.server.builtin import Server
from tests.live_apps.process import ROOT, child_env

#: The time limit of one ``geo-ws load`` subprocess.
PROCESS_TIMEOUT = 30.0


class App:
    """A Flask app with the endpoints of these tests, and what they saw."""

    def __init__(self) -> None:
        self.flask = Flask(__name__)
        self.echoed = 0
        self.busy = Event()  # set once /echo has echoed 200 messages
        echo = WebSocket(self.flask, "/echo", max_message_size=2**25)

        @echo.on("message")
        def on_echo(msg: str | bytes) -> str | bytes:
            self.echoed += 1
            if self.echoed >= 200:
                self.busy.set()
            return msg

        wrong = WebSocket(self.flask, "/wrong")

        @wrong.on("message")
        def on_wrong(msg: str) -> str:
            return msg + "!"

        room = WebSocket(self.flask, "/broadcast")

        @room.on("message")
        def on_broadcast(ws: Any, msg: str) -> None:
            ws.sync_broadcast(msg)


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def address(serve: Callable[[Flask], str], app: App) -> str:
    return serve(app.flask)


def figures(options: Options, **changes: Any) -> dict[str, Any]:
    """Run ``options`` in this process and return every figure, as ``--json`` writes them."""
    for name, value in changes.items():
        setattr(options, name, value)
    summary = summarize(options, [run(options)])
    json.dumps(summary)  # everything must be JSON
    return summary


def geo_ws_load(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m geo_ws load ARGS`` to completion (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "geo_ws", "load", *args],
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )


# --- scenarios -----------------------------------------------------------------------------------


def test_echo_closed_loops_with_a_timeline(address: str, app: App) -> None:
    ticks: list[str] = []
    options = Options(f"ws://{address}/echo", connections=4, duration=1.0, interval=0.25)
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
        Options(f"ws://{address}/echo", connections=3, messages=150, binary=True, size=1000)
    )
    assert summary["steps"]["echo"]["count"] == app.echoed == 150
    assert summary["errors"]["total"] == 0
    warm = figures(Options(f"ws://{address}/echo", connections=2, duration=0.5, warmup=0.5))
    # The warm-up's echoes are not counted, its handshakes are.
    assert 0 < warm["steps"]["echo"]["count"] < app.echoed - 150
    assert warm["steps"]["connect"]["count"] == 2
    assert 0.4 < warm["duration_s"] < 0.8


def test_echo_of_messages_larger_than_the_send_buffer(address: str, app: App) -> None:
    # Replies arrive in the hub, which cannot wait for room to send: a greenlet does.
    summary = figures(
        Options(f"ws://{address}/echo", connections=2, messages=4, size=12 * 2**20, binary=True)
    )
    assert summary["steps"]["echo"]["count"] == app.echoed == 4
    assert summary["errors"]["total"] == 0


def test_echo_mismatches_are_errors(address: str) -> None:
    summary = figures(Options(f"ws://{address}/wrong", connections=2, messages=40))
    assert summary["errors"]["by_kind"] == {"mismatch": 40}
    assert summary["exit_status"] == 0  # no SLO asked


def test_broadcast_counts_every_delivery(address: str) -> None:
    summary = figures(
        Options(f"ws://{address}/broadcast", scenario="broadcast", connections=5, messages=200)
    )
    counts = summary["scenario_figures"]
    assert counts["receivers"] == 5
    assert counts["sent"] == 200
    assert counts["deliveries"] == 1000
    assert counts["missing"] == 0
    assert "duplicated" not in counts
    assert summary["steps"]["broadcast"]["count"] == 200
    assert summary["steps"]["delivery"]["count"] == 1000
    assert summary["errors"]["total"] == 0
    # The last receiver is never earlier than the median one.
    assert summary["steps"]["broadcast"]["p50_ms"] >= summary["steps"]["delivery"]["p50_ms"]


def test_broadcast_to_an_echo_endpoint_reaches_no_receiver(address: str) -> None:
    # An echo endpoint answers the sender only: no receiver ever sees a probe.
    summary = figures(
        Options(
            f"ws://{address}/echo", scenario="broadcast", connections=2, messages=5, timeout=0.5
        )
    )
    assert summary["scenario_figures"]["receivers"] == 0
    assert summary["errors"]["by_kind"] == {"no receiver got the probes": 1}
    assert summary["exit_status"] == 1
    assert summary["duration_s"] < 5


def test_connect_counts_handshakes(address: str) -> None:
    summary = figures(
        Options(f"ws://{address}/echo", scenario="connect", connections=5, messages=60)
    )
    assert summary["main_step"] == "connect"
    assert summary["steps"]["connect"]["count"] == 60
    assert summary["steps"]["close"]["count"] == 60
    assert summary["connections"]["opened"] == 60
    assert summary["errors"]["total"] == 0


def test_idle_connections_survive_and_answer_pings(address: str) -> None:
    summary = figures(
        Options(
            f"ws://{address}/echo",
            scenario="idle",
            connections=20,
            duration=1.0,
            ping_interval=0.3,
        )
    )
    assert summary["scenario_figures"]["survived"] == 20
    assert summary["scenario_figures"]["opened"] == 20
    assert summary["steps"]["ping"]["count"] >= 20
    assert summary["errors"]["total"] == 0


def test_idle_reports_connections_lost_to_a_shutdown(app: App) -> None:
    server = Server(("127.0.0.1", 0), app.flask, log=None)
    server.start()
    options = Options(
        f"ws://127.0.0.1:{server.address[1]}/echo",
        scenario="idle",
        connections=10,
        duration=1.5,
        ping_interval=0.2,
    )

    def shut_down(runner: Runner) -> None:
        if len(runner.open) == 10:  # at the first tick with every connection held
            gevent.spawn(server.shutdown, 2)

    options.interval = 0.25
    summary = summarize(options, [run(options, on_tick=shut_down)])
    assert summary["scenario_figures"]["lost"] == 10
    assert summary["scenario_figures"].get("survived", 0) == 0
    assert summary["errors"]["by_kind"] == {"closed 1001": 10}


def test_refused_connections_fail_the_run() -> None:
    server = Server(("127.0.0.1", 0), Flask(__name__), log=None)
    server.start()
    port = server.address[1]
    server.shutdown(timeout=1)
    summary = figures(Options(f"ws://127.0.0.1:{port}/echo", connections=2, duration=0.3))
    assert summary["errors"]["by_kind"]["refused"] >= 2
    assert summary["exit_status"] == 1  # nothing worked


SCRIPT = """
import itertools

wait_time = 0.001
iterations = itertools.count(1)  # shared by the users of this process

def on_start(client):
    client.send("hello")
    assert client.recv() == "hello"
    client.greeted = True

def user(client):
    assert client.greeted
    with client.step("login"):
        client.send("login")
        assert client.recv(timeout=5) == "login"
    if next(iterations) % 4 == 0:
        with client.step("payment"):
            raise AssertionError("declined")

def on_stop(client):
    client.send("bye")
    assert client.recv() == "bye"
"""


def test_a_scenario_script_with_custom_steps(address: str, tmp_path: Path) -> None:
    script = tmp_path / "scenario.py"
    script.write_text(SCRIPT)
    summary = figures(
        Options(f"ws://{address}/echo", scenario=str(script), connections=3, messages=60)
    )
    steps = summary["steps"]
    assert summary["main_step"] == "user"
    assert steps["login"]["count"] == 60
    # Every 4th iteration fails in its payment step: counted under the step's name.
    assert summary["errors"]["by_kind"] == {"payment: AssertionError": 15}
    assert steps["user"]["count"] == 45
    assert "payment" not in steps
    # on_start and on_stop ran once per user, around the 60 iterations.
    assert summary["scenario_figures"]["sent"] == 60 + 3 + 3
    assert summary["scenario_figures"]["received"] == 60 + 3 + 3


# --- figures -------------------------------------------------------------------------------------


def test_percentiles_are_exact() -> None:
    ordered = [float(i) for i in range(1, 1001)]
    assert [percentile(ordered, q) for q in (50, 90, 99, 99.9, 100)] == [
        500.0,
        900.0,
        990.0,
        999.0,
        1000.0,
    ]
    assert percentile([7.0], 99.9) == 7.0


def test_parts_of_several_processes_merge_tick_by_tick() -> None:
    first = Part(tick_times=[1.0, 2.0], tick_errors=[0, 1], tick_connections=[2, 2])
    first.tick_cpu = [0.5, 1.0]
    first.step("echo").extend([0.001, 0.002, 0.003])
    first.marks["echo"] = [1, 3]
    second = Part(tick_times=[1.0, 2.0], tick_errors=[0, 0], tick_connections=[3, 3])
    second.tick_cpu = [0.4, 0.8]
    second.step("echo").extend([0.010, 0.020])
    second.marks["echo"] = [2, 2]
    first.errors["timeout"] = 1
    first.duration = second.duration = 2.0
    merged = merge([first, second])
    assert merged.samples["echo"] == array("d", [0.001, 0.010, 0.020, 0.002, 0.003])
    assert merged.marks["echo"] == [3, 5]
    assert merged.tick_connections == [5, 5] and merged.tick_errors == [0, 1]
    summary = summarize(Options("ws://x/"), [first, second])
    assert summary["steps"]["echo"]["count"] == 5
    assert summary["steps"]["echo"]["max_ms"] == 20.0
    assert [p["steps"]["echo"]["count"] for p in summary["timeline"]] == [3, 2]
    assert summary["tool_cpu"]["percent_of_one_core"] == [0.0, 0.0]
    assert summary["processes"] == 2


def test_slo_checks_both_ways() -> None:
    part = Part(tick_times=[1.0], tick_errors=[2], tick_connections=[1], tick_cpu=[0.1])
    part.step("echo").extend([0.001] * 99 + [0.050])
    part.marks["echo"] = [100]
    part.errors["timeout"] = 2
    part.duration = 1.0
    loose = Options("ws://x/", max_p99={None: 2.0, "echo": 5.0}, max_errors=2)
    assert summarize(loose, [part])["slo"]["ok"] is True
    assert summarize(loose, [part])["exit_status"] == 0
    for strict in (Options("ws://x/", max_p99={None: 0.5}), Options("ws://x/", max_errors=1)):
        summary = summarize(strict, [part])
        assert summary["slo"]["ok"] is False
        assert summary["exit_status"] == 1
    # A step that never ran cannot meet its objective.
    missing = summarize(Options("ws://x/", max_p99={"login": 100.0}), [part])
    assert missing["slo"]["checks"][0]["value"] is None
    assert missing["exit_status"] == 1


def test_cpu_warning_above_90_percent() -> None:
    part = Part(tick_times=[1.0], tick_errors=[0], tick_connections=[1], tick_cpu=[0.95])
    part.duration, part.cpu = 1.0, 0.95
    warning = cpu_warning(summarize(Options("ws://x/"), [part]))
    assert warning is not None and "--processes" in warning
    part.cpu = 0.5
    assert cpu_warning(summarize(Options("ws://x/"), [part])) is None


def test_error_kinds() -> None:
    from geo_ws.exceptions import ConnectionClosedError, HandshakeError

    assert error_kind(ConnectionRefusedError()) == "refused"
    assert error_kind(TimeoutError()) == "timeout"
    assert error_kind(ConnectionClosedError(1011)) == "closed 1011"
    assert error_kind(HandshakeError(403, "no")) == "handshake 403"
    assert error_kind(ValueError()) == "ValueError"


def test_plot_is_drawn(address: str, tmp_path: Path) -> None:
    options = Options(f"ws://{address}/echo", connections=2, duration=0.6, interval=0.2)
    parts = [run(options)]
    path = tmp_path / "load.png"
    from geo_ws.load.tool import plot

    plot(summarize(options, parts), parts, str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000  # three panels, not an empty canvas


# --- the command ---------------------------------------------------------------------------------


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ws://127.0.0.1:1/", "--scenario", "nope"]) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err
    script = tmp_path / "empty.py"
    script.write_text("x = 1\n")
    assert main(["ws://127.0.0.1:1/", "--scenario", str(script)]) == 2
    assert "no user(client) function" in capsys.readouterr().err
    assert main(["ws://127.0.0.1:1/", "-c", "0"]) == 2


def test_command_writes_json_and_meets_its_slo(address: str, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = geo_ws_load(
        f"ws://{address}/echo",
        *("-c", "3", "-n", "300", "--json", str(out)),
        *("--max-p99", "5000", "--max-p99", "connect=5000", "--max-errors", "0"),
    )
    assert result.returncode == 0, result.stderr
    assert "*echo" in result.stdout and "SLO errors <= 0: 0 ok" in result.stdout
    assert "\r" not in result.stderr  # no progress line without a TTY
    summary = json.loads(out.read_text())
    assert summary["steps"]["echo"]["count"] == 300
    assert summary["slo"]["ok"] is True
    assert [check["check"] for check in summary["slo"]["checks"]] == [
        "p99 of echo (ms)",
        "p99 of connect (ms)",
        "errors",
    ]
    assert summary["options"]["max_p99"] == {"echo": 5000.0, "connect": 5000.0}
    assert summary["exit_status"] == 0


def test_command_exits_1_when_an_slo_is_missed(address: str) -> None:
    result = geo_ws_load(
        f"ws://{address}/wrong", "-c", "2", "-n", "20", "--max-errors", "5", "--max-p99", "1e-6"
    )
    assert result.returncode == 1, result.stderr
    assert "SLO errors <= 5: 20 FAILED" in result.stdout
    assert "SLO p99 of echo (ms) <= 1e-06" in result.stdout


def test_ctrl_c_stops_cleanly_and_reports(address: str, app: App, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "geo_ws", "load", f"ws://{address}/echo", "-d", "60"]
        + ["-c", "3", "--json", str(out)],
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.busy.wait(timeout=PROCESS_TIMEOUT), "the load never reached the server"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=PROCESS_TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, stderr
    assert "INTERRUPTED" in stdout and "*echo" in stdout
    summary = json.loads(out.read_text())
    assert summary["interrupted"] is True
    assert summary["steps"]["echo"]["count"] >= 100
    assert summary["duration_s"] < 30
    assert summary["errors"]["total"] == 0


def test_processes_split_the_work_and_merge(address: str, app: App, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    result = geo_ws_load(
        f"ws://{address}/echo", "-c", "4", "-n", "400", "--processes", "2", "--json", str(out)
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert summary["processes"] == 2
    assert len(summary["tool_cpu"]["percent_of_one_core"]) == 2
    assert summary["steps"]["echo"]["count"] == app.echoed == 400
    assert summary["connections"]["opened"] == 4
    assert "processes 2" in result.stdout
