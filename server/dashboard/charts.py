"""Per-round metric curves drawn server-side as inline SVG (no JS chart library, no CDN)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

#: Site colours (colour-blind friendly, Okabe-Ito); the global model is black.
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442",
           "#999999", "#8C510A", "#01665E")
#: Metrics on a 0..1 axis.
UNIT_METRICS = {"map50", "map", "dice_lesion", "dice", "auc", "op_threshold", "sensitivity",
                "specificity", "op_sensitivity", "op_specificity"}

W, H = 360, 210
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 26, 30


def site_colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    out, v = [], start
    while v <= hi + 1e-9 and len(out) < 12:
        out.append(round(v, 10))
        v += step
    return out


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}"


def line_chart(
    title: str,
    series: Mapping[str, Sequence[tuple[int, float]]],
    *,
    metric: str = "",
    hlines: Mapping[str, float] | None = None,
    colours: Mapping[str, str] | None = None,
) -> str:
    """An SVG chart: x = round (integer ticks), one polyline per series ('global' black,
    thicker), optional dashed horizontal lines (e.g. each site's epsilon target)."""
    colours = dict(colours or {})
    points = [p for s in series.values() for p in s]
    hl = dict(hlines or {})
    if not points:
        return (f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="'
                f'{escape(title)}"><text x="{W / 2}" y="{H / 2}" text-anchor="middle">'
                f"{escape(title)}: no data yet</text></svg>")
    xs = [p[0] for p in points]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if metric in UNIT_METRICS:
        y0, y1 = 0.0, 1.0
    else:
        ys = [p[1] for p in points] + list(hl.values())
        y0, y1 = min(0.0, min(ys)), max(ys)
        if y1 <= y0:
            y1 = y0 + 1.0
        y1 *= 1.08 if y1 > 0 else 1.0
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return TOP + ph - (min(max(y, y0), y1) - y0) / (y1 - y0) * ph

    out = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" '
           f'aria-label="{escape(title)}" data-metric="{escape(metric)}">',
           f'<text class="title" x="{LEFT}" y="16">{escape(title)}</text>']
    for t in _ticks(y0, y1):
        y = sy(t)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" '
                   f'y2="{y:.1f}"/><text class="tick" x="{LEFT - 4}" y="{y + 3:.1f}" '
                   f'text-anchor="end">{_fmt(t)}</text>')
    step = max(1, math.ceil((x1 - x0) / 10))
    for r in range(math.ceil(x0), math.floor(x1) + 1, step):
        x = sx(r)
        out.append(f'<text class="tick" x="{x:.1f}" y="{H - BOTTOM + 14}" '
                   f'text-anchor="middle">{r}</text>')
    out.append(f'<text class="tick" x="{LEFT + pw / 2}" y="{H - 4}" '
               f'text-anchor="middle">round</text>')
    out.append(f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}"/>')
    for name, value in hl.items():
        y = sy(value)
        out.append(f'<line class="target" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" '
                   f'y2="{y:.1f}" stroke="{colours.get(name, "#777")}">'
                   f"<title>{escape(name)} target {value:g}</title></line>")
    # the global model last, on top of the sites
    for name, pts in sorted(series.items(), key=lambda kv: kv[0] == "global"):
        colour = "#111" if name == "global" else colours.get(name, "#777")
        width = 2.4 if name == "global" else 1.4
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{width}" '
                   f'points="{coords}" data-series="{escape(name)}"><title>{escape(name)}'
                   f"</title></polyline>")
        if len(pts) == 1:
            x, y = pts[0]
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>')
    out.append("</svg>")
    return "".join(out)
