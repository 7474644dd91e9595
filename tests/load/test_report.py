"""The figures: exact percentiles, SLO checks both ways, the CPU warning."""

from __future__ import annotations

import re

from geo_ws.load.options import LoadOptions
from geo_ws.load.part import Part
from geo_ws.load.report import cpu_warning, format_report, percentile, summarize


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


def test_slo_checks_both_ways() -> None:
    part = Part(tick_times=[1.0], tick_errors=[2], tick_connections=[1], tick_cpu=[0.1])
    part.step("echo").extend([0.001] * 99 + [0.050])
    part.marks["echo"] = [100]
    part.errors["timeout"] = 2
    part.duration = 1.0
    loose = LoadOptions("ws://x/", max_p99={None: 2.0, "echo": 5.0}, max_errors=2)
    assert summarize(loose, [part])["slo"]["ok"] is True
    assert summarize(loose, [part])["exit_status"] == 0
    for strict in (
        LoadOptions("ws://x/", max_p99={None: 0.5}),
        LoadOptions("ws://x/", max_errors=1),
    ):
        summary = summarize(strict, [part])
        assert summary["slo"]["ok"] is False
        assert summary["exit_status"] == 1


def test_slo_of_a_step_without_latencies_fails_and_says_why() -> None:
    part = Part(tick_times=[1.0], tick_errors=[3], tick_connections=[1], tick_cpu=[0.1])
    part.step("user")  # every iteration failed: in its payment step
    part.marks["user"] = [0]
    part.errors["payment: timeout"] = 3
    part.counters["main_step:user"] = 1  # as run() records it
    part.duration = 1.0
    options = LoadOptions("ws://x/", max_p99={"login": 50.0, "payment": 50.0, None: 50.0})
    summary = summarize(options, [part])
    assert [check["value"] for check in summary["slo"]["checks"]] == [None, None, None]
    assert summary["slo"]["ok"] is False and summary["exit_status"] == 1
    assert format_report(summary).splitlines()[-3:] == [
        "SLO p99 of login (ms) <= 50.0: FAILED: step login never ran (no latency to check)",
        "SLO p99 of payment (ms) <= 50.0: FAILED: no payment step succeeded (no latency to check)",
        "SLO p99 of user (ms) <= 50.0: FAILED: no user step succeeded (no latency to check)",
    ]


def test_cpu_warning_above_90_percent() -> None:
    part = Part(tick_times=[1.0], tick_errors=[0], tick_connections=[1], tick_cpu=[0.95])
    part.duration, part.cpu = 1.0, 0.95
    warning = cpu_warning(summarize(LoadOptions("ws://x/"), [part]))
    assert warning is not None and "--processes" in warning
    part.cpu = 0.5
    assert cpu_warning(summarize(LoadOptions("ws://x/"), [part])) is None


def test_table_columns_stay_apart_whatever_their_width() -> None:
    part = Part(tick_times=[1.0], tick_errors=[0], tick_connections=[1], tick_cpu=[0.1])
    part.step("echo").extend([4.0098674, 4836.852911])  # seconds: 4,009.867 and 4,836,852.911 ms
    part.step("a_step_with_a_long_name").append(0.001)
    part.marks = {"echo": [2], "a_step_with_a_long_name": [1]}
    part.duration = 1.0
    header, *rows = format_report(summarize(LoadOptions("ws://x/"), [part])).splitlines()[3:6]
    assert "4,009.867  4,836,852.911" in rows[1]
    # Every column right-aligned on the header's title, at least two spaces after the one before.
    ends = [match.end() for match in re.finditer(r"\S+( ms)?", header)][1:]
    for row in rows:
        cells = re.split(r"  +", row.strip())
        assert len(cells) == 8, row
        assert [match.end() for match in re.finditer(r"\S+", row)][1:] == ends, row
