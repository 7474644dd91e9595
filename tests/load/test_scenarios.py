"""Every built-in scenario and a scenario script, against a real geo_ws server on loopback."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import gevent
from flask import Flask

import examples.chat  # monkey-patches at import: harmless, conftest.py did it already
from geo_ws.load.options import LoadOptions
from geo_ws.load.report import summarize
from geo_ws.load.runner import Runner, run
from geo_ws.server.builtin import Server

from .helpers import DROP_EVERY, App, figures


def test_echo_of_messages_larger_than_the_send_buffer(address: str, app: App) -> None:
    # Replies arrive in the hub, which cannot wait for room to send: a greenlet does.
    summary = figures(
        LoadOptions(f"ws://{address}/echo", connections=2, messages=4, size=12 * 2**20, binary=True)
    )
    assert summary["steps"]["echo"]["count"] == app.echoed == 4
    assert summary["errors"]["total"] == 0


def test_echo_users_stop_at_their_first_mismatch(address: str) -> None:
    summary = figures(LoadOptions(f"ws://{address}/wrong", connections=2, duration=10))
    assert summary["errors"]["by_kind"] == {"mismatch": 2}  # one per user, no flood
    assert summary["steps"]["echo"]["count"] == 0  # a mismatch is no latency sample
    assert summary["duration_s"] < 5  # the run ends once every user has stopped
    assert summary["exit_status"] == 1  # nothing succeeded
    # Each user's message is its number, then random hex digits: one's echo is not another's.
    [note] = summary["notes"]
    assert re.fullmatch(
        f"ws://{address}/wrong does not echo: it answered '([01] [0-9a-f]{{30}})'"
        r" with '\1!'; each echo user stops at its first mismatch",
        note,
    ), note


def test_echo_against_a_chat_room_that_broadcasts(serve: Callable[[Flask], str]) -> None:
    # examples/chat.py sends every client's message, wrapped in JSON, to every client.
    address = serve(examples.chat.app)
    summary = figures(LoadOptions(f"ws://{address}/chat/ws", connections=5, duration=10))
    echo = summary["steps"]["echo"]
    assert echo["count"] == 0 and echo["max_ms"] is None
    assert summary["errors"]["by_kind"] == {"mismatch": 5}
    assert summary["duration_s"] < 5
    assert summary["exit_status"] == 1
    assert summary["notes"][0].startswith(f"ws://{address}/chat/ws does not echo: it ")


def test_echo_users_do_not_take_each_other_s_messages_for_echoes(address: str) -> None:
    # /broadcast sends each message to every client: the others' are not the user's echo.
    summary = figures(LoadOptions(f"ws://{address}/broadcast", connections=3, duration=10))
    assert summary["errors"]["by_kind"] == {"mismatch": 3}
    assert summary["duration_s"] < 5


def test_broadcast_counts_every_delivery(address: str) -> None:
    summary = figures(
        LoadOptions(f"ws://{address}/broadcast", scenario="broadcast", connections=5, messages=200)
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


def test_broadcast_with_resume_loses_nothing_when_receivers_drop(address: str, app: App) -> None:
    # /resume drops every receiver (1012) after each DROP_EVERY messages: they come back
    # by themselves and get what they missed, once.
    options = LoadOptions(
        f"ws://{address}/resume", scenario="broadcast", connections=4, messages=500, resume=True
    )
    summary = figures(options)
    counts = summary["scenario_figures"]
    assert counts["receivers"] == 4
    assert counts["sent"] == 500
    assert counts["deliveries"] == 2000
    assert counts["missing"] == 0
    assert "duplicated" not in counts
    drops = 4 * (500 // DROP_EVERY)  # the probes are broadcasts too: at least this many
    assert app.drops >= drops
    assert counts["reconnects"] == app.drops
    assert summary["errors"]["total"] == 0


def test_broadcast_with_resume_goes_on_when_the_sender_drops(address: str, app: App) -> None:
    # Every client drops, the sender too, as in a restart: what the sender had in flight
    # never reaches the server. The run gives those up once the sender is back (counted
    # missing) and sends on, rather than stalling.
    app.drop_sender = True
    options = LoadOptions(
        f"ws://{address}/resume",
        scenario="broadcast",
        connections=3,
        messages=400,
        resume=True,
        timeout=1.0,
    )
    summary = figures(options)
    counts = summary["scenario_figures"]
    assert counts["sent"] == 400
    assert "duplicated" not in counts
    assert counts["deliveries"] + counts["missing"] == 3 * 400
    # Whether a restart caught a whole window in flight (then given up, counted in
    # "given_up") depends on timing; either way the run went on to the end, unstalled.
    # Only what the sender had in flight at a restart is missing, from every receiver.
    assert counts["missing"] % 3 == 0
    assert counts["missing"] <= 3 * options.window * (app.broadcasts // DROP_EVERY)
    assert set(summary["errors"]["by_kind"]) == {"missing"}  # not "stalled"


def test_echo_with_resume_reads_positioned_messages(address: str) -> None:
    # One user alone on /resume: its broadcast is its echo, offsets stripped by the client.
    options = LoadOptions(f"ws://{address}/resume", connections=1, messages=300, resume=True)
    summary = figures(options)
    assert summary["steps"]["echo"]["count"] == 300
    assert summary["errors"]["total"] == 0
    assert summary["scenario_figures"]["reconnects"] == 0


def test_broadcast_to_an_echo_endpoint_reaches_no_receiver(address: str) -> None:
    # An echo endpoint answers the sender only: no receiver ever sees a probe.
    summary = figures(
        LoadOptions(
            f"ws://{address}/echo", scenario="broadcast", connections=2, messages=5, timeout=0.5
        )
    )
    assert summary["scenario_figures"]["receivers"] == 0
    assert summary["errors"]["by_kind"] == {"no receiver got the probes": 1}
    assert summary["exit_status"] == 1
    assert summary["duration_s"] < 5


def test_connect_counts_handshakes(address: str) -> None:
    summary = figures(
        LoadOptions(f"ws://{address}/echo", scenario="connect", connections=5, messages=60)
    )
    assert summary["main_step"] == "connect"
    assert summary["steps"]["connect"]["count"] == 60
    assert summary["steps"]["close"]["count"] == 60
    assert summary["connections"]["opened"] == 60
    assert summary["errors"]["total"] == 0


def test_idle_connections_survive_and_answer_pings(address: str) -> None:
    summary = figures(
        LoadOptions(
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
    options = LoadOptions(
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
        LoadOptions(f"ws://{address}/echo", scenario=str(script), connections=3, messages=60)
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
