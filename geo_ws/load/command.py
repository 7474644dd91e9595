"""The ``geo-ws load`` command: its arguments, and a run from parsed arguments to the
report and the exit status (see :data:`DESCRIPTION`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from dataclasses import fields

from .options import LoadOptions
from .plot import plot
from .processes import run_processes, worker
from .report import (
    EXIT_FAILED,
    EXIT_USAGE,
    cpu_warning,
    format_report,
    progress_line,
    summarize,
)
from .runner import Runner, Scenario, run
from .scenarios import scenario_for

__all__ = ["DESCRIPTION", "add_arguments", "command", "main", "options_from"]

DESCRIPTION = """Load-test a WebSocket endpoint.

scenarios (--scenario):
  echo        C connections in closed loops; every echo checked byte for byte
              (a user stops at its first mismatch)
  broadcast   C receivers and a sender; deliveries, missing, duplicated,
              latency from the send to the last receiver
  connect     opening and closing handshakes, C in flight
  idle        hold C connections, ping each every --ping-interval; survivors
  PATH.py     a script: def user(client): ... (on_start, on_stop, wait_time)

Exit status: 0 done; 1 an SLO (--max-p99, --max-errors) is not met, or nothing
succeeded; 2 usage error; 130 interrupted (the results so far are printed)."""
"""The help text of ``geo-ws load``."""


def _header(value: str) -> tuple[str, str]:
    name, colon, content = value.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip(), content.strip()


def _p99(value: str) -> tuple[str | None, float]:
    step, equals, limit = value.rpartition("=")
    try:
        return (step if equals else None), float(limit)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MS or STEP=MS, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``geo-ws load``'s arguments to ``parser``."""
    add = parser.add_argument
    add("url", help="the endpoint: ws://host:port/path")
    add(
        "--scenario",
        "-s",
        default="echo",
        metavar="NAME|PATH.py",
        help="echo, broadcast, connect, idle, or a scenario script (echo)",
    )
    add("-c", "--connections", type=int, default=10, help="connections / users (10)")
    add("--rate", type=float, help="users spawned per second (as fast as handshakes go)")
    add("-d", "--duration", type=float, help="seconds to run (10; 60 with -n)")
    add("-n", "--messages", type=int, help="stop after N messages / handshakes / iterations")
    add("--size", type=int, default=32, help="message size in bytes (32)")
    add("--binary", action="store_true", help="send binary messages (text by default)")
    add("--warmup", type=float, default=0.0, help="seconds of warm-up, not measured (0)")
    add("--timeout", type=float, default=10.0, help="seconds one operation may take (10)")
    add("--interval", type=float, default=1.0, help="seconds between progress ticks (1)")
    add("--window", type=int, default=32, help="broadcast: messages in flight (32)")
    add("--ping-interval", type=float, default=5.0, help="idle: seconds between pings (5)")
    add(
        "-H",
        "--header",
        dest="headers",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra handshake header (repeatable)",
    )
    add(
        "--subprotocol",
        dest="subprotocols",
        action="append",
        default=[],
        help="offer this subprotocol (repeatable)",
    )
    add(
        "--resume",
        action="store_true",
        help="resume after a drop (an endpoint with recovery): every message once, in order",
    )
    add(
        "--max-p99",
        type=_p99,
        action="append",
        default=[],
        metavar="[STEP=]MS",
        help="exit 1 if the p99 of the main step (or STEP) exceeds MS",
    )
    add("--max-errors", type=int, metavar="N", help="exit 1 if there are more than N errors")
    add("--processes", type=int, default=1, metavar="N", help="worker processes (1)")
    add("--json", dest="json_path", metavar="OUT.json", help="write every figure to this file")
    add("--plot", dest="plot_path", metavar="OUT.png", help="draw throughput and latencies")
    add("--worker-output", help=argparse.SUPPRESS)


def options_from(args: argparse.Namespace) -> LoadOptions:
    """Build :class:`LoadOptions` from parsed ``geo-ws load`` arguments (same names)."""
    values = {f.name: getattr(args, f.name) for f in fields(LoadOptions) if hasattr(args, f.name)}
    values["max_p99"] = dict(values["max_p99"])  # given as (step, limit) pairs
    return LoadOptions(**values)


def _check_usage(options: LoadOptions) -> str | None:
    """A usage error in ``options``, or None."""
    if options.connections < 1:
        return "-c must be at least 1"
    if options.messages is not None and options.messages < 1:
        return "-n must be at least 1"
    if options.run_time <= 0 or options.interval <= 0 or options.timeout <= 0:
        return "-d, --interval and --timeout must be positive"
    if options.size < (8 if options.scenario == "broadcast" else 0):
        return "--size must be at least 8 for broadcast (the sequence number)"
    if options.resume and options.scenario in ("connect", "idle"):
        return f"--resume does not go with {options.scenario}: a drop is what it measures"
    if options.resume and options.subprotocols:
        return "--resume does not go with --subprotocol: the resume wire is the subprotocol"
    if options.plot_path and importlib.util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib: pip install 'geo_ws[load]'"
    return None


def command(args: argparse.Namespace) -> int:
    """Run ``geo-ws load`` with parsed arguments; return the exit status.

    0: done; 1: an SLO is not met, or nothing succeeded; 2: a usage error;
    130: interrupted (the results so far are still reported).
    """
    options = options_from(args)
    problem = _check_usage(options)
    scenario: Scenario | None = None
    if problem is None and options.processes <= 1:
        try:
            scenario = scenario_for(options)  # imports a script once, here
        except ValueError as exc:
            problem = str(exc)
    if problem is not None:
        print(f"geo-ws load: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.worker_output:
        return worker(options, scenario, args.worker_output)
    tty = sys.stderr.isatty()
    show = tty if options.progress is None else options.progress

    def on_tick(runner: Runner) -> None:
        sys.stderr.write("\r" + progress_line(runner).ljust(100))
        sys.stderr.flush()

    def on_progress(line: str) -> None:
        sys.stderr.write("\r" + line.ljust(100))
        sys.stderr.flush()

    cpu_by_process: list[float] | None = None
    if options.processes > 1:
        parts = run_processes(options, on_progress if show else None)
        if not parts:
            print("geo-ws load: no worker produced results", file=sys.stderr)
            return EXIT_FAILED
    else:
        parts = [
            run(
                options,
                scenario=scenario,
                on_tick=on_tick if show else None,
                handle_signals=True,
            )
        ]
    if show:
        sys.stderr.write("\n")
    summary = summarize(options, parts, cpu_by_process)
    print(format_report(summary))
    warning = cpu_warning(summary)
    if warning:
        print(warning, file=sys.stderr)
    if options.json_path:
        with open(options.json_path, "w") as file:
            json.dump(summary, file, indent=1)
    if options.plot_path:
        plot(summary, parts, options.plot_path)
    return int(summary["exit_status"])


def main(argv: Sequence[str] | None = None) -> int:
    """``geo-ws load`` on its own: parse ``argv`` and run; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="geo-ws load",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return command(parser.parse_args(argv))
