"""``--plot``: throughput and latency over time, and the main step's latency distribution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .part import Part, merge

__all__ = ["plot"]


def plot(summary: dict[str, Any], parts: Sequence[Part], path: str) -> None:
    """Draw throughput and latency over time, and the latency distribution, into ``path``.

    Raises:
        ImportError: matplotlib is not installed (``pip install geo_ws[load]``).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    part = merge(parts)
    times = [point["t"] for point in summary["timeline"]]
    figure, (rates, latencies, distribution) = plt.subplots(3, 1, figsize=(9, 11))
    figure.suptitle(f"geo-ws load: {summary['scenario']} on {summary['url']}")
    for name in summary["steps"]:
        series = [point["steps"].get(name, {}) for point in summary["timeline"]]
        rates.plot(times, [s.get("rate_per_s", 0) for s in series], label=name)
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            latencies.plot(times, [s.get(key) for s in series], style, label=f"{name} {key[:3]}")
    rates.set_title("throughput")
    rates.set_xlabel("seconds")
    rates.set_ylabel("per second")
    rates.legend(loc="best", fontsize="small")
    latencies.set_title("latency over time")
    latencies.set_xlabel("seconds")
    latencies.set_ylabel("ms")
    latencies.set_yscale("log")
    latencies.legend(loc="best", fontsize="small")
    main = summary["main_step"]
    samples = [s * 1000.0 for s in part.samples.get(main, [])]
    distribution.set_title(f"latency distribution of {main} ({len(samples):,} samples)")
    if samples:
        low, high = max(min(samples), 1e-3), max(samples)
        bins = [low * (high / low) ** (i / 60) for i in range(61)] if high > low else 60
        distribution.hist(samples, bins=bins)
        distribution.set_xscale("log")
        figures = summary["steps"][main]
        for name in ("p50_ms", "p99_ms", "p99_9_ms"):
            distribution.axvline(figures[name], linestyle=":", color="k")
            distribution.annotate(name[:-3].replace("_", "."), (figures[name], 0), rotation=90)
    distribution.set_xlabel("ms")
    distribution.set_ylabel("samples")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
