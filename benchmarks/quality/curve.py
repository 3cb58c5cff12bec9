"""The learning curve of step 4 as a standalone SVG (FID vs kimg, the best point ringed): no plotting
library needed, and the file diffs as text in docs/quality."""

from __future__ import annotations

import math
from typing import Optional
from xml.sax.saxutils import escape

from .common import fmt_kimg


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v < hi + step * 0.999:
        ticks.append(round(v, 10))
        v += step
    return ticks


def curve_svg(name: str, points: list[dict], best_kimg: float, select_num: int, final: Optional[dict]) -> str:
    """FID vs kimg as a standalone SVG: axes, ticks, labels, the curve, the best point ringed."""
    W, H, L, R, T, B = 640, 400, 70, 20, 40, 55
    xs = [p["kimg"] for p in points]
    ys = [p["fid"] for p in points]
    xt = nice_ticks(0.0, max(xs) if max(xs) > 0 else 1.0)
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.05 or max(abs(hi) * 0.05, 1.0)
    yt = nice_ticks(max(lo - pad, 0.0), hi + pad)
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def X(v: float) -> float:
        return L + (v - x0) / (x1 - x0) * (W - L - R)

    def Y(v: float) -> float:
        return H - B - (v - y0) / (y1 - y0) * (H - T - B)

    def num(v: float) -> str:
        return f"{v:g}"

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<title>{escape(name)}: FID ({select_num} samples) vs kimg</title>',
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{escape(name)}: FID vs training '
           f'progress</text>']
    for v in xt:
        out.append(f'<line class="grid" x1="{X(v):.1f}" y1="{T}" x2="{X(v):.1f}" y2="{H - B}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{X(v):.1f}" y="{H - B + 17}" text-anchor="middle">{num(v)}</text>')
    for v in yt:
        out.append(f'<line class="grid" x1="{L}" y1="{Y(v):.1f}" x2="{W - R}" y2="{Y(v):.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{L - 7}" y="{Y(v) + 4:.1f}" text-anchor="end">{num(v)}</text>')
    out += [f'<line class="axis" x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
            f'<line class="axis" x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
            f'<text x="{(L + W - R) / 2}" y="{H - 14}" text-anchor="middle">kimg (thousands of real images '
            f'shown to D)</text>',
            f'<text x="18" y="{(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 18 '
            f'{(T + H - B) / 2})">FID, {select_num} samples (lower is better)</text>',
            '<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="'
            + " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in zip(xs, ys)) + '"/>']
    for p in points:
        best = p["kimg"] == best_kimg
        out.append(f'<circle class="point" cx="{X(p["kimg"]):.1f}" cy="{Y(p["fid"]):.1f}" r="{5 if best else 3.5}" '
                   f'fill="{"#d62728" if best else "#1f77b4"}"><title>kimg {fmt_kimg(p["kimg"])}: FID '
                   f'{p["fid"]:.2f}</title></circle>')
    bp = next(p for p in points if p["kimg"] == best_kimg)
    bx, by = X(bp["kimg"]), Y(bp["fid"])
    label = f"best: FID {bp['fid']:.2f} at kimg {fmt_kimg(bp['kimg'])}"
    if final is not None:
        label += f" ({final['fid']:.2f} from {final['num']:,} samples)"
    anchor = "end" if bx > (L + W - R) / 2 else "start"
    dx = -10 if anchor == "end" else 10
    ly = by - 14 if by - 14 > T + 10 else by + 22
    out += [f'<circle class="best" cx="{bx:.1f}" cy="{by:.1f}" r="10" fill="none" stroke="#d62728" '
            f'stroke-width="2"/>',
            f'<text class="best-label" x="{bx + dx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" fill="#d62728" '
            f'stroke="white" stroke-width="4" paint-order="stroke">'
            f'{escape(label)}</text>',
            "</svg>"]
    return "\n".join(out) + "\n"
