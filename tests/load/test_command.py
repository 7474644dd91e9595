"""The ``geo-ws load`` command, as ``python -m geo_ws load`` subprocesses: usage errors, the
JSON, the SLO exit status both ways, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from geo_ws.load.command import main
from tests.live_apps.process import ROOT, child_env

from .helpers import PROCESS_TIMEOUT, App, geo_ws_load


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ws://127.0.0.1:1/", "--scenario", "nope"]) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err
    script = tmp_path / "empty.py"
    script.write_text("x = 1\n")
    assert main(["ws://127.0.0.1:1/", "--scenario", str(script)]) == 2
    assert "no user(client) function" in capsys.readouterr().err
    assert main(["ws://127.0.0.1:1/", "-c", "0"]) == 2
    assert main(["ws://127.0.0.1:1/", "-s", "idle", "--resume"]) == 2
    assert "--resume does not go with idle" in capsys.readouterr().err
    assert main(["ws://127.0.0.1:1/", "--resume", "--subprotocol", "chat"]) == 2
    assert "--resume does not go with --subprotocol" in capsys.readouterr().err


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
        f"ws://{address}/wrong", "-c", "2", "-n", "20", "--max-errors", "1", "--max-p99", "1e-6"
    )
    assert result.returncode == 1, result.stderr
    assert "SLO errors <= 1: 2 FAILED" in result.stdout  # each user stopped at its mismatch
    assert "SLO p99 of echo (ms) <= 1e-06: FAILED: no echo step succeeded" in result.stdout


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
