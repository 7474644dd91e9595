"""``--plot`` draws a PNG."""

from __future__ import annotations

from pathlib import Path

from geo_ws.load.options import LoadOptions
from geo_ws.load.plot import plot
from geo_ws.load.report import summarize
from geo_ws.load.runner import run


def test_plot_is_drawn(address: str, tmp_path: Path) -> None:
    options = LoadOptions(f"ws://{address}/echo", connections=2, duration=0.6, interval=0.2)
    parts = [run(options)]
    path = tmp_path / "load.png"
    plot(summarize(options, parts), parts, str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000  # three panels, not an empty canvas
