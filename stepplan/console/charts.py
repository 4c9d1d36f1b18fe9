"""Charts drawn server-side as inline SVG: no chart library, no script, nothing the strict
CSP has to allow. Colours are SVG presentation attributes (not ``style``)."""

from __future__ import annotations

from html import escape

PALETTE = ("#2f6fde", "#e8743b", "#19a979", "#ed4a7b", "#945ecf", "#13a4b4", "#525df4", "#bf399e", "#6c8893",
           "#ee6868")


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _nice(top: float) -> float:
    """A round axis maximum ≥ top."""
    if top <= 0:
        return 1.0
    mag = 10 ** (len(str(int(top))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if step * mag >= top:
            return float(step * mag)
    return float(10 * mag)


def stacked_bars(labels: list[str], series: list[tuple[str, list[float]]], *, unit: str, title: str,
                 fmt: str = "{:,.0f}", width: int = 720, height: int = 240) -> str:
    """A stacked bar chart: one bar per label, one coloured segment per series. Each segment
    carries ``data-label``, ``data-series`` and ``data-value`` (the tests read them) and a
    ``<title>`` tooltip."""
    left, bottom, top_pad, right = 64, 28, 10, 8
    plot_w, plot_h = width - left - right, height - bottom - top_pad
    totals = [sum(vals[i] for _, vals in series) for i in range(len(labels))]
    ymax = _nice(max(totals, default=0.0))
    n = max(1, len(labels))
    slot = plot_w / n
    bar = max(1.0, slot * 0.7)
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for k in range(5):  # grid and y labels
        v = ymax * k / 4
        y = top_pad + plot_h - plot_h * k / 4
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#d8dde6" '
                   f'stroke-width="1"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">'
                   f'{escape(fmt.format(v))}</text>')
    every = max(1, n // 10)
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar) / 2
        base = 0.0
        for j, (name, vals) in enumerate(series):
            v = vals[i]
            if v <= 0:
                continue
            h = plot_h * v / ymax
            y = top_pad + plot_h - plot_h * base / ymax - h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{max(h, 0.5):.1f}" '
                       f'fill="{colour(j)}" data-label="{escape(label)}" data-series="{escape(name)}" '
                       f'data-value="{v:g}"><title>{escape(label)} · {escape(name)}: '
                       f'{escape(fmt.format(v))} {escape(unit)}</title></rect>')
            base += v
        if i % every == 0:
            out.append(f'<text x="{x + bar / 2:.1f}" y="{height - 10}" text-anchor="middle" font-size="11" '
                       f'fill="#555">{escape(label[5:] if len(label) == 10 else label)}</text>')
    out.append("</svg>")
    return "".join(out)


def legend(names: list[str]) -> str:
    items = "".join(f'<li><svg width="12" height="12" aria-hidden="true"><rect width="12" height="12" '
                    f'fill="{colour(i)}"/></svg> {escape(n)}</li>' for i, n in enumerate(names))
    return f'<ul class="legend">{items}</ul>'


def left_bar(fraction: float, width: int = 160) -> str:
    """A left-rate bar (a fraction from 0 to 1)."""
    f = min(1.0, max(0.0, fraction))
    fill = "#19a979" if f > 0.25 else ("#e8a33b" if f > 0.1 else "#d64545")
    return (f'<svg class="bar" width="{width}" height="10" viewBox="0 0 {width} 10" role="img" '
            f'aria-label="{f * 100:.1f}%"><rect width="{width}" height="10" rx="3" fill="#e3e7ee"/>'
            f'<rect width="{width * f:.1f}" height="10" rx="3" fill="{fill}"/></svg>')
