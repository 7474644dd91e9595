"""Parts of several processes merge tick by tick."""

from __future__ import annotations

from array import array

from geo_ws.load.options import LoadOptions
from geo_ws.load.part import Part, merge
from geo_ws.load.report import summarize


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
    summary = summarize(LoadOptions("ws://x/"), [first, second])
    assert summary["steps"]["echo"]["count"] == 5
    assert summary["steps"]["echo"]["max_ms"] == 20.0
    assert [p["steps"]["echo"]["count"] for p in summary["timeline"]] == [3, 2]
    assert summary["tool_cpu"]["percent_of_one_core"] == [0.0, 0.0]
    assert summary["processes"] == 2
