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
    # A step that never ran cannot meet its objective.
    missing = summarize(LoadOptions("ws://x/", max_p99={"login": 100.0}), [part])
    assert missing["slo"]["checks"][0]["value"] is None
    assert missing["exit_status"] == 1


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
