"""Inline SVG charts: geometry computed here, drawn by a template (no chart library, no CDN).

Usage::

    from rqplus.dashboard.charts import line_chart
    chart = line_chart({"emails": [(t0, 3), (t1, 8)]}, start=t0, end=t1)
    chart.lines[0].points      # "40.0,150.0 700.0,20.0" for <polyline points="...">
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

#: Colours of successive series (Bootstrap's palette, readable on white).
PALETTE = ("#0d6efd", "#dc3545", "#198754", "#fd7e14", "#6f42c1", "#20c997", "#6c757d", "#d63384")


@dataclass
class Line:
    """One series as drawn: its name, colour, ``points`` for ``<polyline points=...>``, last value.

    Usage (in a template): ``<polyline stroke="{{ line.colour }}" points="{{ line.points }}"/>``
    """

    name: str
    colour: str
    points: str
    last: int


@dataclass
class LineChart:
    """What the template draws: the plot area, one polyline per series, axis ticks."""

    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    lines: list[Line] = field(default_factory=list)
    y_ticks: list[tuple[float, int]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)


def line_chart(series: dict[str, list[tuple[float, int]]], start: float, end: float, width: int = 760,
               height: int = 200) -> LineChart:
    """Lay out ``series`` (name -> ``[(unix time, value), ...]``) over the time span ``start``..``end``.

    Usage: ``line_chart(metrics.depth_history(redis), time.time() - 3600, time.time())``
    """
    chart = LineChart(width, height, left=44, top=12, right=width - 24, bottom=height - 26)
    peak = max((value for points in series.values() for _, value in points), default=0)
    top_value = _nice_ceiling(peak)
    span = max(end - start, 1e-9)

    def x(at: float) -> float:
        return round(chart.left + (at - start) / span * (chart.right - chart.left), 1)

    def y(value: float) -> float:
        return round(chart.bottom - value / top_value * (chart.bottom - chart.top), 1)

    for index, (name, points) in enumerate(sorted(series.items())):
        chart.lines.append(Line(name, PALETTE[index % len(PALETTE)],
                                " ".join(f"{x(at)},{y(value)}" for at, value in points), points[-1][1]))
    chart.y_ticks = [(y(value), value) for value in (0, top_value // 2, top_value)]
    chart.x_ticks = [(x(at), time.strftime("%H:%M", time.localtime(at)))
                     for at in (start, start + span / 2, end)]
    return chart


def _nice_ceiling(value: int) -> int:
    """The smallest of 2, 5, 10, 20, 50, 100, ... at or above ``value``: a round top for the y axis."""
    step = 2
    while step < value:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2
    return step
