"""Inline SVG line charts for the report: no JavaScript, no external file, readable offline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

BEFORE_COLOR = "#c2410c"
AFTER_COLOR = "#1d4ed8"
RUN_COLORS = ("#1d4ed8", "#c2410c", "#15803d", "#7e22ce", "#b45309", "#0e7490", "#be185d")

# Percentile axis of a spectrum chart: x = log10(1 / (1 - q)), so 90, 99, 99.9, 99.99 are
# evenly spaced, as in HdrHistogram's plots; the tail is where the two modes differ.
SPECTRUM_MAX_X = 4.0
SPECTRUM_TICKS = ((0.0, "0"), (1.0, "90"), (2.0, "99"), (3.0, "99.9"), (4.0, "99.99"))


def spectrum_quantiles(points: int = 61) -> list[float]:
    """Quantiles (0..0.9999) evenly spaced on the spectrum chart's percentile axis."""
    return [1.0 - 10.0 ** (-SPECTRUM_MAX_X * i / (points - 1)) for i in range(points)]


def spectrum_x(quantile: float) -> float:
    return -math.log10(1.0 - quantile)


@dataclass(frozen=True)
class Series:
    label: str  # series sharing a label share one legend entry
    xs: Sequence[float]
    ys: Sequence[float]
    color: str
    dashed: bool = False


@dataclass(frozen=True)
class Axis:
    label: str
    log: bool = False
    ticks: Sequence[tuple[float, str]] = field(default_factory=tuple)  # default: computed
    include_zero: bool = False


WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 12, 40
LEGEND_ROW = 18
LEGEND_COLUMNS = 3


def line_chart(
    series: Sequence[Series],
    *,
    x: Axis,
    y: Axis,
    title: str,
    shaded: Sequence[tuple[float, float, str]] = (),
    guides: Sequence[tuple[float, str]] = (),
) -> Markup:
    """One SVG element: lines, axes with ticks, shaded x ranges (label), horizontal guides."""
    legend = _legend_entries(series)
    legend_rows = math.ceil(len(legend) / LEGEND_COLUMNS)
    height = HEIGHT + legend_rows * LEGEND_ROW
    x_low, x_high = _range([v for s in series for v in s.xs], x, extra=[a for a, _, _ in shaded])
    y_low, y_high = _range(
        [v for s in series for v in s.ys], y, extra=[value for value, _ in guides]
    )
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(value: float) -> float:
        return LEFT + plot_w * _fraction(value, x_low, x_high, x.log)

    def py(value: float) -> float:
        return TOP + plot_h * (1.0 - _fraction(value, y_low, y_high, y.log))

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}"><title>{escape(title)}</title>'
    ]
    for start, end, label in shaded:
        x0, x1 = px(max(start, x_low)), px(min(end, x_high))
        parts.append(
            f'<rect x="{x0:.1f}" y="{TOP}" width="{max(x1 - x0, 0):.1f}" height="{plot_h}" '
            f'fill="#e5e7eb"/><text x="{x0 + 4:.1f}" y="{TOP + 12}" class="shade">'
            f"{escape(label)}</text>"
        )
    for value, label in y.ticks or _ticks(y_low, y_high, y.log):
        if y_low <= value <= y_high:
            parts.append(
                f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(value):.1f}" '
                f'y2="{py(value):.1f}" class="grid"/><text x="{LEFT - 6}" '
                f'y="{py(value) + 4:.1f}" text-anchor="end">{escape(label)}</text>'
            )
    for value, label in x.ticks or _ticks(x_low, x_high, x.log):
        if x_low <= value <= x_high:
            parts.append(
                f'<line x1="{px(value):.1f}" x2="{px(value):.1f}" y1="{TOP}" '
                f'y2="{TOP + plot_h}" class="grid"/><text x="{px(value):.1f}" '
                f'y="{TOP + plot_h + 16}" text-anchor="middle">{escape(label)}</text>'
            )
    for value, label in guides:
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(value):.1f}" y2="{py(value):.1f}" '
            f'class="guide"/><text x="{WIDTH - RIGHT - 4}" y="{py(value) - 4:.1f}" '
            f'text-anchor="end" class="shade">{escape(label)}</text>'
        )
    for line in series:
        path = _path(line, px, py, x, y)
        if path:
            dash = ' stroke-dasharray="5 3"' if line.dashed else ""
            parts.append(
                f'<path d="{path}" fill="none" stroke="{line.color}" stroke-width="1.5"{dash}/>'
            )
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" class="frame"/>'
        f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 6}" text-anchor="middle">'
        f"{escape(x.label)}</text>"
        f'<text transform="translate(14 {TOP + plot_h / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y.label)}</text>'
    )
    for i, (label, color, dashed) in enumerate(legend):
        lx = LEFT + (i % LEGEND_COLUMNS) * (plot_w / LEGEND_COLUMNS)
        ly = HEIGHT + (i // LEGEND_COLUMNS) * LEGEND_ROW + 4
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts.append(
            f'<line x1="{lx:.0f}" x2="{lx + 18:.0f}" y1="{ly:.0f}" y2="{ly:.0f}" '
            f'stroke="{color}" stroke-width="2"{dash}/><text x="{lx + 22:.0f}" '
            f'y="{ly + 4:.0f}">{escape(label)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _legend_entries(series: Sequence[Series]) -> list[tuple[str, str, bool]]:
    seen: dict[str, tuple[str, str, bool]] = {}
    for line in series:
        seen.setdefault(line.label, (line.label, line.color, line.dashed))
    return list(seen.values())


def _usable(value: float, log: bool) -> bool:
    return math.isfinite(value) and (value > 0 or not log)


def _range(values: list[float], axis: Axis, extra: Sequence[float] = ()) -> tuple[float, float]:
    usable = [v for v in [*values, *extra] if _usable(v, axis.log)]
    if axis.include_zero and not axis.log:
        usable.append(0.0)
    if not usable:
        return (1.0, 10.0) if axis.log else (0.0, 1.0)
    low, high = min(usable), max(usable)
    if axis.log:
        low, high = 10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(high))
        return (low, high * 10) if low == high else (low, high)
    if low == high:
        return low - 1.0, high + 1.0
    return low, high + (high - low) * 0.05


def _fraction(value: float, low: float, high: float, log: bool) -> float:
    if log:
        return (math.log10(value) - math.log10(low)) / (math.log10(high) - math.log10(low))
    return (value - low) / (high - low)


def _ticks(low: float, high: float, log: bool) -> list[tuple[float, str]]:
    if log:
        decades = range(round(math.log10(low)), round(math.log10(high)) + 1)
        steps = (1, 2, 5) if len(decades) <= 3 else (1,)
        values = [s * 10.0**d for d in decades for s in steps]
        return [(v, _number(v)) for v in values if low <= v <= high]
    raw_step = (high - low) / 5
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw_step)
    first = math.ceil(low / step) * step
    count = int((high - first) / step) + 1
    return [(first + i * step, _number(first + i * step)) for i in range(count)]


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:.3g}"


def _path(line: Series, px, py, x: Axis, y: Axis) -> str:
    """Path commands; a gap (NaN, or <= 0 on a log axis) starts a new segment."""
    commands, pen_down = [], False
    for xv, yv in zip(line.xs, line.ys, strict=True):
        if not (_usable(xv, x.log) and _usable(yv, y.log)):
            pen_down = False
            continue
        commands.append(f"{'L' if pen_down else 'M'}{px(xv):.1f} {py(yv):.1f}")
        pen_down = True
    return "".join(commands)
