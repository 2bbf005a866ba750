"""Small inline-SVG plotting and HTML text helpers for the self-contained report.

One ``Plot`` holds the scales, grid, ticks and labels of a chart; the marks (``dot``,
``cross``, ``hbars``) are SVG strings with native ``<title>`` tooltips (``svg_title``). No
plotting library: the report is one HTML file that opens anywhere. ``fmt``, ``fixed``, ``note``
and ``kv_table`` format values and text for the report's sections (``search.report``,
``search.report_final``, ``search.gallery``).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

CLASS_NAMES = {0: "normal", 1: "ALL"}
CLASS_COLOURS = {0: "#2e9d5b", 1: "#8e44ad"}


def esc(value: Any) -> str:
    """HTML-escaped ``str(value)``, quotes included."""
    return html.escape(str(value), quote=True)


def num(value: Any) -> float | None:
    """``value`` as a finite float, or None for None, NaN, infinities, bools and non-numbers."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def fmt(value: Any, digits: int = 4) -> str:
    """Short human text for a value (not escaped)."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value)
    return str(value)


def fixed(value: Any) -> str:
    """A metric with 4 decimals, or a dash when missing or not finite."""
    v = num(value)
    return "—" if v is None else f"{v:.4f}"


def note(text: str) -> str:
    """A highlighted explanatory paragraph (text is escaped)."""
    return f'<p class="note">{esc(text)}</p>'


def kv_table(items: Iterable[tuple[Any, Any]]) -> str:
    """A two-column key/value table."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in items)
    return f'<table class="kv">{rows}</table>'


def nice_ticks(lo: float, hi: float, n: int = 6, *, integer: bool = False) -> list[float]:
    """About ``n`` round tick values (steps of 1, 2, 2.5 or 5 times a power of 10) in [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10.0 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * mag for m in steps if m * mag >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9) * step
    count = int(math.floor((hi - first) / step + 1e-9)) + 1
    return [round(first + i * step, 12) for i in range(count)]


def score_range(values: Sequence[float]) -> tuple[float, float]:
    """A padded axis range around scores, kept inside [0, 1] when the scores are."""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.05, hi + 0.05
    pad = 0.06 * (hi - lo)
    lo = max(lo - pad, 0.0) if min(values) >= 0 else lo - pad
    hi = min(hi + pad, 1.0) if max(values) <= 1 else hi + pad
    return lo, hi


def int_range(lo: float, hi: float) -> tuple[float, float]:
    """An axis range for integer positions (trial numbers, epochs) with half a step of air."""
    return (lo - 0.5, hi + 0.5) if hi - lo < 1 else (lo - 0.03 * (hi - lo), hi + 0.03 * (hi - lo))


@dataclass
class Plot:
    """Linear scales from data to pixels, and the frame drawn around a plot's marks.

    Ticks are ``(value, label)`` pairs; None picks round numbers. A legend entry is ``(kind,
    colour, label)`` with kind one of ``line``, ``dash``, ``dot``, ``cross``, ``bar``; the
    legend sits right of the plot area so it never hides data.
    """

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    x_label: str = ""
    y_label: str = ""
    width: int = 620  # of the plot area, pixels
    height: int = 280
    left: int = 64  # room for y tick labels
    x_ticks: list[tuple[float, str]] | None = None
    y_ticks: list[tuple[float, str]] | None = None
    x_integer: bool = False
    y_grid: bool = True
    legend: list[tuple[str, str, str]] = field(default_factory=list)
    top: int = 12
    bottom: int = 46

    def x(self, v: float) -> float:
        """Pixel column of data value ``v``."""
        lo, hi = self.x_range
        return self.left + (v - lo) / (hi - lo) * self.width

    def y(self, v: float) -> float:
        """Pixel row of data value ``v``."""
        lo, hi = self.y_range
        return self.top + (1.0 - (v - lo) / (hi - lo)) * self.height

    def render(self, body: Iterable[str], label: str) -> str:
        """The ``<svg>`` element: grid, axes, ticks, labels, ``body`` marks and legend."""
        x0, x1 = self.left, self.left + self.width
        y0, y1 = self.top + self.height, self.top
        x_ticks = self.x_ticks
        if x_ticks is None:
            x_ticks = [(t, f"{t:g}") for t in nice_ticks(*self.x_range, integer=self.x_integer)]
        y_ticks = self.y_ticks or [(t, f"{t:g}") for t in nice_ticks(*self.y_range)]
        out = []
        for v, text in x_ticks:
            px = self.x(v)
            out.append(f'<line class="grid" x1="{px:.1f}" y1="{y1}" x2="{px:.1f}" y2="{y0}"/>')
            out.append(f'<text x="{px:.1f}" y="{y0 + 16}" text-anchor="middle">{esc(text)}</text>')
        for v, text in y_ticks:
            py = self.y(v)
            if self.y_grid:
                out.append(f'<line class="grid" x1="{x0}" y1="{py:.1f}" x2="{x1}" y2="{py:.1f}"/>')
            out.append(f'<text x="{x0 - 6}" y="{py + 4:.1f}" text-anchor="end">{esc(text)}</text>')
        out.append(f'<path class="axis" d="M{x0},{y1} V{y0} H{x1}"/>')
        out.append(
            f'<text class="label" x="{(x0 + x1) / 2:.1f}" y="{y0 + 38}" '
            f'text-anchor="middle">{esc(self.x_label)}</text>'
        )
        out.append(
            f'<text class="label" transform="translate(14,{(y0 + y1) / 2:.1f}) rotate(-90)" '
            f'text-anchor="middle">{esc(self.y_label)}</text>'
        )
        out.extend(body)
        for i, (kind, colour, text) in enumerate(self.legend):
            lx, ly = x1 + 20, self.top + 12 + 20 * i
            out.append(legend_swatch(kind, colour, lx, ly))
            out.append(f'<text x="{lx + 30}" y="{ly + 4}">{esc(text)}</text>')
        width = x1 + (200 if self.legend else 16)
        height = self.top + self.height + self.bottom
        return (
            f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{esc(label)}">'
            f"<title>{esc(label)}</title>{''.join(out)}</svg>"
        )


def legend_swatch(kind: str, colour: str, x: float, y: float) -> str:
    """A small legend symbol at ``(x, y)``."""
    if kind == "dot":
        return dot(x + 11, y, colour)
    if kind == "cross":
        return cross(x + 11, y, colour)
    if kind == "bar":
        return f'<rect x="{x + 3}" y="{y - 6}" width="16" height="12" fill="{colour}"/>'
    dash = ' stroke-dasharray="5,3"' if kind == "dash" else ""
    return (
        f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" stroke="{colour}" '
        f'stroke-width="2"{dash}/>'
    )


def svg_title(title: str) -> str:
    """A native tooltip child element, or nothing."""
    return f"<title>{esc(title)}</title>" if title else ""


def dot(
    x: float,
    y: float,
    colour: str,
    r: float = 4.0,
    title: str = "",
    cls: str = "",
    *,
    hollow: bool = False,
) -> str:
    """A filled circle, or a ring when ``hollow``."""
    c = f' class="{cls}"' if cls else ""
    fill, stroke, width = ("white", colour, 1.5) if hollow else (colour, "white", 0.8)
    return (
        f'<circle{c} cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}" stroke="{stroke}" '
        f'stroke-width="{width}">{svg_title(title)}</circle>'
    )


def cross(x: float, y: float, colour: str, s: float = 4.5, title: str = "", cls: str = "") -> str:
    """An ✕ marker."""
    c = f' class="{cls}"' if cls else ""
    a, b, c0, c1 = x - s, x + s, y - s, y + s
    d = f"M{a:.1f},{c0:.1f} L{b:.1f},{c1:.1f} M{a:.1f},{c1:.1f} L{b:.1f},{c0:.1f}"
    return (
        f'<path{c} d="{d}" stroke="{colour}" stroke-width="2.4" fill="none">'
        f"{svg_title(title)}</path>"
    )


def hbars(
    items: Sequence[tuple[str, float, str, str]],
    *,
    x_label: str,
    x_max: float,
    label: str,
    legend: list[tuple[str, str, str]] | None = None,
) -> str:
    """A horizontal bar chart of ``(name, value, colour, value text)``, first item on top."""
    n = len(items)
    longest = max((len(name) for name, *_ in items), default=4)
    text_room = 7 * max((len(text) for *_, text in items), default=4) + 10  # value labels
    plot = Plot(
        x_range=(0.0, x_max * (1 + text_room / 480)),
        x_ticks=[(t, f"{t:g}") for t in nice_ticks(0.0, x_max)],
        y_range=(n, 0),
        x_label=x_label,
        height=20 * n,
        left=max(64, 7 * longest + 14),
        width=480 + text_room,
        y_grid=False,
        legend=legend or [],
        y_ticks=[(i + 0.5, name) for i, (name, *_) in enumerate(items)],
    )
    body = []
    for i, (name, value, colour, text) in enumerate(items):
        x0, top = plot.x(0.0), plot.y(i) + 3
        w = max(plot.x(value) - x0, 0.0)
        body.append(
            f'<rect x="{x0:.1f}" y="{top:.1f}" width="{w:.1f}" height="14" fill="{colour}">'
            f"{svg_title(f'{name}: {text}')}</rect>"
            f'<text x="{x0 + w + 4:.1f}" y="{top + 11:.1f}">{esc(text)}</text>'
        )
    return plot.render(body, label)
