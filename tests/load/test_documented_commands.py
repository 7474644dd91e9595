"""examples/echo.py serves what the load tool's documentation needs, and the ``geo-ws load``
commands of docs/load.md and of README's Load testing section run as written against it.

Each command runs as a ``python -m geo_ws load`` subprocess against
``python examples/echo.py`` on a loopback ephemeral port, bounded: at most 10
connections and half a second (the benchmark's ``taskset`` lines of the README need the
bench's own server and are left out).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

import examples.echo  # monkey-patches at import: harmless, conftest.py did it already
from geo_ws.client import ResumingConnection
from tests.helpers import WAIT
from tests.live_apps.process import ROOT, ServerProcess, child_env
from tests.test_examples import free_port, wait_listening

from .helpers import PROCESS_TIMEOUT

Serve = Callable[[Any], str]  # the serve fixture of conftest.py

#: A documented command (its comment left out): a line that starts with it, or a script's
#: first comment naming it.
COMMAND = re.compile(r"^(?:\s*|# [\w.]+: )(geo-ws load ws://[^#\n]*?)\s*(?:#.*)?$", re.MULTILINE)
#: The most connections and seconds a documented command gets here.
CONNECTIONS, SECONDS = 10, 0.5


def readme_load_testing() -> str:
    """README's Load testing section."""
    readme = (ROOT / "README.md").read_text()
    return readme.split("\n## Load testing\n", 1)[1].split("\n## ", 1)[0]


LOAD_MD = (ROOT / "docs" / "load.md").read_text()
DOCUMENTED = sorted(set(COMMAND.findall(LOAD_MD)) | set(COMMAND.findall(readme_load_testing())))
#: docs/load.md's ``login.py`` scenario script.
[LOGIN_PY] = re.findall(r"```python\n(# login\.py: .*?)```", LOAD_MD, re.DOTALL)


def bounded(command: str, port: int) -> list[str]:
    """``command``'s arguments after ``geo-ws load``, on ``port``, short and light."""
    url, *args = shlex.split(command, comments=True)[2:]
    url = re.sub(r"^ws://[^/]+", f"ws://127.0.0.1:{port}", url)
    if "-d" not in args:
        args += ["-d", str(SECONDS)]
    for flag, most in (("-c", CONNECTIONS), ("-d", SECONDS)):
        if flag in args:
            i = args.index(flag) + 1
            args[i] = str(min(type(most)(args[i]), most))
    return [url, *args]


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    """``python examples/echo.py --port PORT``, as the docs start it, for the whole module."""
    port = free_port()
    with ServerProcess("examples/echo.py", "--port", str(port)) as server:
        wait_listening(port, server)
        yield port


# -- examples/echo.py ----------------------------------------------------------------------


def test_echo_example_endpoints(serve: Serve) -> None:
    address = serve(examples.echo.app)
    echo = websocket.create_connection(f"ws://{address}/echo", timeout=WAIT)
    first = websocket.create_connection(f"ws://{address}/room", timeout=WAIT)
    second = websocket.create_connection(f"ws://{address}/room", timeout=WAIT)
    chat = websocket.create_connection(f"ws://{address}/chat", timeout=WAIT)
    feed = ResumingConnection(f"ws://{address}/feed", timeout=WAIT)
    try:
        feed.send("to the feed")
        assert feed.recv(timeout=WAIT) == "to the feed"  # its offset stripped: a resume
        assert feed.id is not None
        echo.send("hello")
        assert echo.recv() == "hello"
        echo.send_binary(b"\x00\xff")
        assert echo.recv() == b"\x00\xff"
        second.send("to the room")
        assert first.recv() == second.recv() == "to the room"
        chat.send("hello")
        assert chat.recv() == "welcome"
        chat.send("just talking")  # no answer: the next reply is the login's
        chat.send("login alice")
        assert chat.recv() == "hi alice"
    finally:
        for client in (echo, first, second, chat, feed):
            client.close()


def test_echo_example_runs_with_geo_ws_run() -> None:
    with ServerProcess("-m", "geo_ws", "run", "examples.echo:app", "--port", "0") as server:
        host, port = server.wait_serving()
        ws = websocket.create_connection(f"ws://{host}:{port}/echo", timeout=WAIT)
        try:
            ws.send("ping?")
            assert ws.recv() == "ping?"
        finally:
            ws.close()


# -- the documented commands ---------------------------------------------------------------


def test_the_documentation_has_commands_for_every_scenario() -> None:
    scenarios = {re.search(r"(?:-s|--scenario) (\S+)", c) for c in DOCUMENTED}
    assert {m.group(1) if m else "echo" for m in scenarios} == {
        "echo",
        "broadcast",
        "connect",
        "idle",
        "login.py",
    }


@pytest.mark.parametrize("command", DOCUMENTED)
def test_documented_command_runs(command: str, echo_port: int, tmp_path: Path) -> None:
    (tmp_path / "login.py").write_text(LOGIN_PY)
    # In a directory of its own, where login.py is, and where --json and --plot write.
    result = subprocess.run(
        [sys.executable, "-m", "geo_ws", "load", *bounded(command, echo_port)],
        cwd=tmp_path,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\nerrors: 0\n" in result.stdout, result.stdout
    for output in re.findall(r"--(?:json|plot) (\S+)", command):
        assert (tmp_path / output).stat().st_size > 0
