"""``--processes``: workers split the connections and their parts merge."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from geo_ws.load.command import add_arguments, options_from
from geo_ws.load.options import LoadOptions
from geo_ws.load.processes import worker_arguments

from .helpers import App, geo_ws_load


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


def test_echo_users_of_different_workers_send_different_messages(
    address: str, tmp_path: Path
) -> None:
    # /broadcast sends each message to every client: another worker's user 0 is not an echo.
    out = tmp_path / "out.json"
    result = geo_ws_load(
        f"ws://{address}/broadcast", "-c", "2", "--processes", "2", "-d", "10", "--json", str(out)
    )
    summary = json.loads(out.read_text())
    assert summary["errors"]["by_kind"] == {"mismatch": 2}, result.stdout
    assert len(summary["notes"]) == 2  # one per worker
    assert summary["duration_s"] < 5


def test_workers_get_resume() -> None:
    options = LoadOptions("ws://127.0.0.1:1/feed", scenario="broadcast", resume=True)
    arguments = worker_arguments(options, 2, 0)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert options_from(parser.parse_args(arguments)).resume is True
    assert "--resume" not in worker_arguments(LoadOptions("ws://127.0.0.1:1/"), 2, 0)
