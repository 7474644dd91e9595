"""What geo_ws's metrics take from prometheus_client's internals.

prometheus_client documents ``Histogram.observe``, one value at a time; geo_ws counts
handler durations in plain lists on the hot path and adds them in bulk, into the
histogram's own bucket values (non-cumulative, ``_buckets`` and ``_sum``). Its
multiprocess mode names each live gauge's file ``gauge_<mode>_<pid>.db``; geo_ws reads
the pids from those names to forget the workers that died without saying so. Tested on
prometheus_client 0.17.0 to 0.26.0, which leaves its multiprocess module untyped.
prometheus_client is imported when first needed: geo_ws imports without it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["add_observations", "live_gauge_pids", "mark_process_dead", "multiprocess_registry"]

_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db")


def add_observations(histogram: Any, counts: Sequence[int], total: float) -> None:
    """Add observations to one labelled histogram at once.

    Args:
        histogram: a labelled child of a ``prometheus_client.Histogram``.
        counts: how many observations fell in each bucket (not cumulative), in the
            order of the histogram's buckets, ``+Inf`` last.
        total: the sum of the observed values.
    """
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(total)


def live_gauge_pids(directory: str) -> set[int]:
    """The pids that have live gauges (``livesum``, ``liveall``...) in a multiprocess
    directory."""
    pids = set()
    for path in Path(directory).glob("gauge_live*_*.db"):
        match = _LIVE_GAUGE_FILE.fullmatch(path.name)
        if match:
            pids.add(int(match.group(1)))
    return pids


def mark_process_dead(pid: int, directory: str) -> None:
    """Remove a dead process's live gauges from a multiprocess directory (nothing if
    prometheus_client is not installed: then nothing wrote there)."""
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """A registry that collects what every process wrote to ``directory``."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
    return registry
