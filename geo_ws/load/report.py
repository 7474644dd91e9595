"""The figures of a run: exact percentiles, the summary that ``--json`` writes, the SLO
checks and the exit status, the printed report and the progress line.

The tool reports its own CPU use: above 90 % of a core it is probably the bottleneck
(:func:`cpu_warning`), and ``--processes N`` splits the connections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from .options import LoadOptions
from .part import Part, merge
from .runner import Runner

__all__ = [
    "CPU_WARNING",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PERCENTILES",
    "cpu_warning",
    "format_number",
    "format_report",
    "last_tick",
    "milliseconds",
    "percentile",
    "progress_line",
    "summarize",
]

#: Percentiles reported for every step.
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
#: Above this share of one core, the tool warns that it may be the bottleneck.
CPU_WARNING = 90.0
#: Exit statuses.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0-100) of values sorted in ascending order.

    Raises:
        IndexError: ``ordered`` is empty.
    """
    rank = max(1, math.ceil(len(ordered) * q / 100 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def milliseconds(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _latency_figures(samples: Sequence[float]) -> dict[str, float | None]:
    """min/mean/percentiles/max of latencies, in milliseconds (None without samples)."""
    names = ["min_ms", "mean_ms", *(_pname(q) for q in PERCENTILES), "max_ms"]
    if not samples:
        return dict.fromkeys(names)
    ordered = sorted(samples)
    figures: dict[str, float | None] = {
        "min_ms": milliseconds(ordered[0]),
        "mean_ms": milliseconds(math.fsum(ordered) / len(ordered)),
    }
    for q in PERCENTILES:
        figures[_pname(q)] = milliseconds(percentile(ordered, q))
    figures["max_ms"] = milliseconds(ordered[-1])
    return figures


def _pname(q: float) -> str:
    """``p99_ms``, ``p99_9_ms``: the JSON name of a percentile."""
    return f"p{q:g}_ms".replace(".", "_")


def _main_step(part: Part) -> str:
    """The main step a run recorded in its counters (``main_step:NAME``)."""
    for key in part.counters:
        if key.startswith("main_step:"):
            return key.partition(":")[2]
    return "echo"


def summarize(
    options: LoadOptions, parts: Sequence[Part], cpu_by_process: Sequence[float] | None = None
) -> dict[str, Any]:
    """Every figure of a run, as written by ``--json``.

    Args:
        options: what was run.
        parts: what each process measured.
        cpu_by_process: each process's CPU use in % of one core (computed from the
            parts when None).
    """
    part = merge(parts)
    duration = part.duration
    main = _main_step(part)
    steps: dict[str, Any] = {}
    for name, samples in sorted(part.samples.items()):
        figures: dict[str, Any] = {
            "count": len(samples),
            "rate_per_s": round(len(samples) / duration, 1),
        }
        figures.update(_latency_figures(samples))
        steps[name] = figures
    if cpu_by_process is None:
        cpu_by_process = [round(100.0 * p.cpu / max(p.duration, 1e-9), 1) for p in parts]
    counters = {k: v for k, v in sorted(part.counters.items()) if not k.startswith("main_step:")}
    errors_total = sum(part.errors.values())
    summary: dict[str, Any] = {
        "scenario": options.scenario,
        "url": options.url,
        "options": {k: v for k, v in asdict(options).items() if k != "max_p99"},
        "main_step": main,
        "duration_s": round(duration, 3),
        "interrupted": part.interrupted,
        "processes": len(parts),
        "connections": {
            "target": options.connections,
            "opened": part.opened,
            "open_at_end": part.tick_connections[-1] if part.tick_connections else 0,
        },
        "steps": steps,
        "errors": {"total": errors_total, "by_kind": dict(part.errors.most_common())},
        "notes": list(part.notes),
        "scenario_figures": counters,
        "timeline": _timeline(part),
        "tool_cpu": {
            "percent_of_one_core": list(cpu_by_process),
            "seconds": round(part.cpu, 3),
            "warning": any(cpu > CPU_WARNING for cpu in cpu_by_process),
        },
    }
    summary["options"]["max_p99"] = {str(k or main): v for k, v in options.max_p99.items()}
    summary["slo"] = _slo(options, summary)
    summary["exit_status"] = _exit_status(summary)
    return summary


def _timeline(part: Part) -> list[dict[str, Any]]:
    """Per tick: rate and p50/p99 of every step, errors, connections, CPU."""
    points: list[dict[str, Any]] = []
    previous_time = previous_cpu = 0.0
    for i, t in enumerate(part.tick_times):
        span = max(t - previous_time, 1e-9)
        steps: dict[str, Any] = {}
        for name, samples in part.samples.items():
            marks = part.marks[name]
            start = marks[i - 1] if i else 0
            window = sorted(samples[start : marks[i]])
            steps[name] = {
                "count": len(window),
                "rate_per_s": round(len(window) / span, 1),
                "p50_ms": milliseconds(percentile(window, 50)) if window else None,
                "p99_ms": milliseconds(percentile(window, 99)) if window else None,
            }
        points.append(
            {
                "t": t,
                "connections": part.tick_connections[i],
                "errors": part.tick_errors[i],
                "cpu_percent": round(100.0 * (part.tick_cpu[i] - previous_cpu) / span, 1),
                "steps": steps,
            }
        )
        previous_time, previous_cpu = t, part.tick_cpu[i]
    return points


def _slo(options: LoadOptions, summary: dict[str, Any]) -> dict[str, Any]:
    """Check ``--max-p99`` and ``--max-errors``."""
    checks: list[dict[str, Any]] = []
    for step, limit in options.max_p99.items():
        name = step or summary["main_step"]
        value = summary["steps"].get(name, {}).get("p99_ms")
        checks.append(
            {
                "check": f"p99 of {name} (ms)",
                "limit": limit,
                "value": value,
                # A step that never succeeded cannot meet its latency objective.
                "ok": value is not None and value <= limit,
                "note": None if value is not None else _no_latency(summary, name),
            }
        )
    if options.max_errors is not None:
        total = summary["errors"]["total"]
        checks.append(
            {
                "check": "errors",
                "limit": options.max_errors,
                "value": total,
                "ok": total <= options.max_errors,
                "note": None,
            }
        )
    return {"checks": checks, "ok": all(check["ok"] for check in checks)}


def _no_latency(summary: dict[str, Any], step: str) -> str:
    """Why ``step`` has no latency: it never ran, or it ran and never succeeded."""
    failed = any(kind.startswith(f"{step}: ") for kind in summary["errors"]["by_kind"])
    if step in summary["steps"] or failed:
        return f"no {step} step succeeded (no latency to check)"
    return f"step {step} never ran (no latency to check)"


def _exit_status(summary: dict[str, Any]) -> int:
    if summary["interrupted"]:
        return EXIT_INTERRUPTED
    if not summary["slo"]["ok"]:
        return EXIT_FAILED
    main = summary["steps"].get(summary["main_step"], {"count": 0})
    if main["count"] == 0 and summary["errors"]["total"]:
        return EXIT_FAILED  # nothing worked
    return EXIT_OK


def format_number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def format_report(summary: dict[str, Any]) -> str:
    """The human-readable report: a table of steps, errors, scenario figures, CPU, SLOs."""
    connections = summary["connections"]
    lines = [
        f"geo-ws load: {summary['scenario']} on {summary['url']}",
        f"connections {connections['target']} (opened {connections['opened']})"
        f"   measured {summary['duration_s']:.2f} s   processes {summary['processes']}"
        + ("   INTERRUPTED" if summary["interrupted"] else ""),
        "",
    ]
    lines += _steps_table(summary)
    errors = summary["errors"]
    kinds = ", ".join(f"{kind} {count}" for kind, count in errors["by_kind"].items())
    lines += ["", f"errors: {errors['total']}" + (f"  ({kinds})" if kinds else "")]
    lines += [f"note: {note}" for note in summary["notes"]]
    if summary["scenario_figures"]:
        figures = "  ".join(f"{k} {v:,}" for k, v in summary["scenario_figures"].items())
        lines.append(f"{summary['scenario']}: {figures}")
    cpu = summary["tool_cpu"]
    shares = " + ".join(f"{share:.0f} %" for share in cpu["percent_of_one_core"])
    lines.append(f"tool CPU: {shares} of one core ({cpu['seconds']:.2f} s)")
    for check in summary["slo"]["checks"]:
        verdict = "ok" if check["ok"] else "FAILED"
        result = f"{verdict}: {check['note']}" if check["note"] else f"{check['value']} {verdict}"
        lines.append(f"SLO {check['check']} <= {check['limit']}: {result}")
    return "\n".join(lines)


#: The latency columns of the report's table.
TABLE_LATENCIES = ("p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms")
#: The narrowest each column of the table may be: step, count, rate, latencies.
TABLE_WIDTHS = (16, 11, 12, *[11] * len(TABLE_LATENCIES))
#: Spaces between two columns at least, whatever their figures.
TABLE_GAP = 2


def _steps_table(summary: dict[str, Any]) -> list[str]:
    """The table of steps: the step's name left-aligned, figures right-aligned, every
    column as wide as its widest cell needs (and at least as in :data:`TABLE_WIDTHS`)."""
    rows = [["step", "count", "/s", *(n[:-3].replace("_", ".") + " ms" for n in TABLE_LATENCIES)]]
    for name, figures in summary["steps"].items():
        marker = "*" if name == summary["main_step"] else " "
        rows.append(
            [
                marker + name,
                f"{figures['count']:,}",
                f"{figures['rate_per_s']:,.1f}",
                *(format_number(figures[column]) for column in TABLE_LATENCIES),
            ]
        )
    widths = [
        max(narrowest, TABLE_GAP + max(len(row[i]) for row in rows))
        for i, narrowest in enumerate(TABLE_WIDTHS)
    ]
    return [
        row[0].ljust(widths[0])
        + "".join(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))
        for row in rows
    ]


def cpu_warning(summary: dict[str, Any]) -> str | None:
    """The warning printed when the tool used more than 90 % of a core, or None."""
    if not summary["tool_cpu"]["warning"]:
        return None
    top = max(summary["tool_cpu"]["percent_of_one_core"])
    return (
        f"warning: the load tool used {top:.0f} % of a core: it may be the bottleneck it "
        "measures; split the connections with --processes N (one per free core)"
    )


def last_tick(part: Part, step: str) -> tuple[float, list[float]]:
    """The rate of ``step`` over the last tick's interval, and that interval's latencies, sorted.

    Returns:
        ``(0.0, [])`` before the first tick, or for a step without samples.
    """
    marks = part.marks.get(step)
    if not marks:
        return 0.0, []
    start = marks[-2] if len(marks) > 1 else 0
    window = sorted(part.samples[step][start : marks[-1]])
    times = part.tick_times  # as many as marks
    span = times[-1] - (times[-2] if len(times) > 1 else 0.0)
    return len(window) / max(span, 1e-9), window


def progress_line(runner: Runner) -> str:
    """One line: elapsed, connections, the main step's rate and p50/p99, errors."""
    part = runner.part
    step = runner.main_step
    rate, window = last_tick(part, step)
    p50 = milliseconds(percentile(window, 50)) if window else None
    p99 = milliseconds(percentile(window, 99)) if window else None
    elapsed = part.tick_times[-1] if part.tick_times else 0.0
    return (
        f"{elapsed:6.1f}s  conns {len(runner.open):,}  {step} {rate:,.0f}/s  "
        f"p50 {format_number(p50)} ms  p99 {format_number(p99)} ms  "
        f"errors {sum(part.errors.values()):,}"
    )
