"""LoadOptions: how long a run lasts."""

from __future__ import annotations

from geo_ws.load.options import LoadOptions


def test_run_time_is_10_s_60_s_with_a_count_or_the_duration() -> None:
    assert LoadOptions("ws://x/").run_time == 10.0
    assert LoadOptions("ws://x/", messages=100).run_time == 60.0
    assert LoadOptions("ws://x/", messages=100, duration=2.5).run_time == 2.5
