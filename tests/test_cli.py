"""The ``geo-ws`` command (``python -m geo_ws``): serving an app, options, errors."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import websocket

from tests.helpers import WAIT
from tests.live_apps.process import ServerProcess, child_env, run_command, run_python
from tests.test_examples import ROBYN_TOUR_ENDPOINTS


def check_robyn_tour(address: str) -> None:
    """``GET /`` lists the endpoints and ``/web_socket`` greets and answers."""
    with urllib.request.urlopen(f"http://{address}/", timeout=WAIT) as response:
        assert response.status == 200
        assert response.headers.get_content_type() == "application/json"
        assert json.loads(response.read()) == {"websockets": ROBYN_TOUR_ENDPOINTS}
    ws = websocket.create_connection(f"ws://{address}/web_socket", timeout=WAIT)
    try:
        assert ws.recv() == "Connected to ws"
        ws.send("hi")
        assert ws.recv() == "Hello world, from ws"
    finally:
        ws.close()


def test_run_serves_http_and_websocket_of_an_app() -> None:
    with ServerProcess("-m", "geo_ws", "run", "examples.robyn_tour:app", "--port", "0") as server:
        host, port = server.wait_serving()
        assert host == "127.0.0.1"
        assert port > 0
        check_robyn_tour(f"{host}:{port}")
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0


def test_run_host_option() -> None:
    with ServerProcess(
        "-m", "geo_ws", "run", "examples.robyn_tour:app", "--host", "127.0.0.1", "--port", "0"
    ) as server:
        host, port = server.wait_serving()
        assert host == "127.0.0.1"
        check_robyn_tour(f"127.0.0.1:{port}")


def test_run_module_alone_means_module_app() -> None:
    with ServerProcess("-m", "geo_ws", "run", "examples.robyn_tour", "--port", "0") as server:
        host, port = server.wait_serving()
        check_robyn_tour(f"{host}:{port}")


def test_run_unknown_module_is_a_readable_error() -> None:
    result = run_python("-m", "geo_ws", "run", "no_such_module_for_geo_ws:app", "--port", "0")
    assert result.returncode != 0
    assert "geo-ws: cannot import 'no_such_module_for_geo_ws'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "serving on" not in result.stderr


def test_a_failing_import_inside_the_app_module_shows_its_traceback(tmp_path: Path) -> None:
    package = tmp_path / "app_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "app_imp.py").write_text("import os\nimport foo_missing\napp = None\n")
    result = subprocess.run(
        [sys.executable, "-m", "geo_ws", "run", "app_pkg.app_imp:app", "--port", "0"],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "geo-ws: while importing 'app_pkg.app_imp', an import failed" in result.stderr
    assert "Traceback" in result.stderr, result.stderr
    # Where: the module's file and line, and what.
    assert 'app_imp.py", line 2' in result.stderr and "import foo_missing" in result.stderr
    assert "No module named 'foo_missing'" in result.stderr
    assert "serving on" not in result.stderr
    # A package the user named that is missing stays a short message.
    missing = run_python("-m", "geo_ws", "run", "examples.no_such_module:app", "--port", "0")
    assert "geo-ws: cannot import 'examples.no_such_module'" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr


def test_run_missing_attribute_is_a_readable_error() -> None:
    result = run_python("-m", "geo_ws", "run", "examples.robyn_tour:no_such_app", "--port", "0")
    assert result.returncode != 0
    assert "geo-ws: 'examples.robyn_tour' has no attribute 'no_such_app'" in result.stderr, (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert "serving on" not in result.stderr


def test_help() -> None:
    result = run_python("-m", "geo_ws", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: geo-ws")
    assert "run" in result.stdout


def test_run_help_lists_the_options() -> None:
    result = run_python("-m", "geo_ws", "run", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--host", "--port", "--graceful-timeout"):
        assert option in result.stdout


def test_no_command_is_a_usage_error() -> None:
    result = run_python("-m", "geo_ws")
    assert result.returncode == 2
    assert "usage: geo-ws" in result.stderr


def test_installed_console_script() -> None:
    # `pip install -e .` installs it (CI does); its absence is a packaging failure.
    script = shutil.which("geo-ws")
    assert script is not None, "the geo-ws console script is not installed (pip install -e .)"
    result = run_command(script, "run", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: geo-ws run")
    assert "--graceful-timeout" in result.stdout
