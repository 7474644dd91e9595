"""What one process measured (:class:`Part`), and the merge of several processes' parts."""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Part", "merge"]


@dataclass
class Part:
    """What one process measured; :func:`merge` and :func:`~geo_ws.load.report.summarize`
    read a list of them.

    Attributes:
        samples: latencies in seconds by step name, in the order they were measured.
        marks: by step name, ``len(samples[step])`` at each tick.
        tick_times: seconds since the measurement started, at each tick.
        tick_errors: errors so far, at each tick.
        tick_connections: open connections, at each tick.
        tick_cpu: this process's CPU seconds since the measurement started, at each tick.
        errors: errors by kind (``refused``, ``timeout``, ``closed 1011``, ``mismatch``...).
        counters: the scenario's own figures (deliveries, missing, survived...).
        notes: what the report must tell (why ``echo``'s users stopped...), in order.
        opened: connections opened.
        duration: seconds measured (after the warm-up).
        cpu: CPU seconds (user + system) this process used while measuring.
        interrupted: the run was cut short (Ctrl-C, SIGTERM).
    """

    samples: dict[str, array[float]] = field(default_factory=dict)
    marks: dict[str, list[int]] = field(default_factory=dict)
    tick_times: list[float] = field(default_factory=list)
    tick_errors: list[int] = field(default_factory=list)
    tick_connections: list[int] = field(default_factory=list)
    tick_cpu: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    opened: int = 0
    duration: float = 0.0
    cpu: float = 0.0
    interrupted: bool = False

    def step(self, name: str) -> array[float]:
        """The samples of step ``name``, created empty on first use."""
        samples = self.samples.get(name)
        if samples is None:
            samples = self.samples[name] = array("d")
            self.marks[name] = [0] * len(self.tick_times)
        return samples


def merge(parts: Sequence[Part]) -> Part:
    """Merge the parts of several processes into one (ticks are aligned by index).

    Raises:
        ValueError: ``parts`` is empty.
    """
    if not parts:
        raise ValueError("nothing to merge")
    if len(parts) == 1:
        return parts[0]
    ticks = min(len(part.tick_times) for part in parts)
    merged = Part(tick_times=list(parts[0].tick_times[:ticks]))
    merged.tick_errors = [sum(p.tick_errors[i] for p in parts) for i in range(ticks)]
    merged.tick_connections = [sum(p.tick_connections[i] for p in parts) for i in range(ticks)]
    merged.tick_cpu = [sum(p.tick_cpu[i] for p in parts) for i in range(ticks)]
    names = sorted({name for part in parts for name in part.samples})
    for name in names:
        samples = merged.step(name)
        marks = merged.marks[name]
        # Interleave tick by tick, so that each interval keeps its own samples.
        empty = array("d")
        for i in range(ticks + 1):
            for part in parts:
                part_samples = part.samples.get(name, empty)
                part_marks = part.marks.get(name, [])
                start = part_marks[i - 1] if i else 0
                end = part_marks[i] if i < ticks else len(part_samples)
                samples.extend(part_samples[start:end])
            if i < ticks:
                marks[i] = len(samples)
    for part in parts:
        merged.errors.update(part.errors)
        merged.counters.update(part.counters)
        merged.notes += [note for note in part.notes if note not in merged.notes]
        merged.opened += part.opened
        merged.cpu += part.cpu
        merged.interrupted |= part.interrupted
    merged.duration = max(part.duration for part in parts)
    return merged
