"""``--processes N``: N worker processes (``python -m geo_ws load``), their parts merged.

Each worker gets its share of the connections, rate and count, prints a JSON line per
tick for its parent's progress line, and pickles its :class:`~geo_ws.load.part.Part`.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import IO, Any

import gevent

from .options import LoadOptions
from .part import Part
from .report import EXIT_OK, format_number, last_tick, milliseconds, percentile
from .runner import GRACE, Runner, Scenario, run

__all__ = ["merged_progress", "run_processes", "tick_record", "worker", "worker_arguments"]


def _share(total: int | None, workers: int, index: int) -> int | None:
    """Worker ``index``'s share of ``total`` (the first ones get the remainder)."""
    if total is None:
        return None
    return total // workers + (1 if index < total % workers else 0)


def worker_arguments(options: LoadOptions, workers: int, index: int) -> list[str]:
    """The ``geo-ws load`` arguments of worker ``index`` of ``workers``."""
    args = [options.url, "--scenario", options.scenario]
    args += ["-c", str(_share(options.connections, workers, index))]
    if options.rate:
        args += ["--rate", str(options.rate / workers)]
    args += ["-d", str(options.run_time)]
    messages = _share(options.messages, workers, index)
    if messages is not None:
        args += ["-n", str(messages)]
    args += ["--size", str(options.size), "--warmup", str(options.warmup)]
    args += ["--timeout", str(options.timeout), "--interval", str(options.interval)]
    args += ["--window", str(options.window), "--ping-interval", str(options.ping_interval)]
    if options.binary:
        args.append("--binary")
    if options.resume:
        args.append("--resume")
    for name, value in options.headers:
        args += ["-H", f"{name}: {value}"]
    for subprotocol in options.subprotocols:
        args += ["--subprotocol", subprotocol]
    return args


def run_processes(
    options: LoadOptions, on_progress: Callable[[str], None] | None = None
) -> list[Part]:
    """Run ``options.processes`` workers (``python -m geo_ws load``) and collect their parts.

    Each worker gets its share of the connections, rate and count; they start together
    and their ticks are merged by index. SIGINT and SIGTERM are passed on to them.
    """
    workers = max(1, min(options.processes, options.connections))
    directory = tempfile.mkdtemp(prefix="geo-ws-load-")
    outputs = [os.path.join(directory, f"worker{i}.pickle") for i in range(workers)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "geo_ws",
                "load",
                *worker_arguments(options, workers, i),
                "--worker-output",
                outputs[i],
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    latest: list[dict[str, Any]] = [{} for _ in procs]

    def read_ticks(i: int, stream: IO[str]) -> None:
        for line in stream:
            latest[i] = json.loads(line)
            if on_progress is not None and all(latest):
                on_progress(merged_progress(latest))

    readers = [gevent.spawn(read_ticks, i, p.stdout) for i, p in enumerate(procs) if p.stdout]

    def forward(signum: int) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    handlers = [
        gevent.signal_handler(signum, forward, signum) for signum in (signal.SIGINT, signal.SIGTERM)
    ]
    bound = options.warmup + options.run_time + 3 * options.timeout + 30
    try:
        for proc in procs:
            try:
                proc.wait(timeout=bound)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        gevent.joinall(readers, timeout=GRACE)
    finally:
        for handler in handlers:
            handler.cancel()
    parts = []
    for path in outputs:
        try:
            with open(path, "rb") as file:
                parts.append(pickle.load(file))
        except OSError:
            continue  # that worker failed: its error is on stderr
        finally:
            if os.path.exists(path):
                os.unlink(path)
    os.rmdir(directory)
    return parts


def merged_progress(latest: Sequence[dict[str, Any]]) -> str:
    """The progress line of several workers: sums, and the worst p99."""
    p99s = [tick["p99"] for tick in latest if tick.get("p99") is not None]
    return (
        f"{latest[0]['t']:6.1f}s  conns {sum(t['connections'] for t in latest):,}  "
        f"{latest[0]['step']} {sum(t['rate'] for t in latest):,.0f}/s  "
        f"p99 (worst worker) {format_number(max(p99s) if p99s else None)} ms  "
        f"errors {sum(t['errors'] for t in latest):,}"
    )


def tick_record(runner: Runner) -> dict[str, Any]:
    """What a worker prints at each tick for its parent's progress line."""
    part = runner.part
    rate, window = last_tick(part, runner.main_step)
    return {
        "t": part.tick_times[-1],
        "step": runner.main_step,
        "connections": len(runner.open),
        "rate": rate,
        "p99": milliseconds(percentile(window, 99)) if window else None,
        "errors": sum(part.errors.values()),
    }


def worker(options: LoadOptions, scenario: Scenario | None, output: str) -> int:
    """A worker of ``--processes``: run, print ticks as JSON lines, pickle the part."""

    def on_tick(runner: Runner) -> None:
        print(json.dumps(tick_record(runner)), flush=True)

    part = run(options, scenario=scenario, on_tick=on_tick, handle_signals=True)
    with open(output, "wb") as file:
        pickle.dump(part, file)
    return EXIT_OK
