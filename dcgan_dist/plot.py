"""A picture of training for people: `python -m dcgan_dist.report RUN|SWEEP --plot out.png` (or .svg).

Six panels against kimg, from the run files report already reads (its `read_jsonl` and `number`,
and its rows: the runs, their order, names and best FID):

    losses (D, G)            D outputs (D(real), D(fake))        diversity (fake/real ratio, fake, real)
    FID (best point starred)  KID x10^3 (std as a band)           precision / recall

Every run of a sweep is overlaid in every panel in the same colour, named in the legend below the
panels; each panel's own legend says what its line styles mean. A panel for which no run has data
stays in place and says so ("no FID evaluations"): the layout is the same for every run, and a
metric that was never measured is visible as such rather than silently missing.

matplotlib is imported inside `figure` and `save`: `report` without --plot does not pay for it.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import UserError
from .layout import METRICS, STATS
from .report import label, number, read_jsonl

FORMATS = (".png", ".svg")
DPI = 100


class PlotError(UserError, ValueError):
    """--plot names a file the figure cannot be written to."""


@dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    source: str                              # the run file its records come from (layout.STATS or METRICS)
    curves: tuple[tuple[str, str, str], ...]  # (record key, name in the panel's legend, line style)
    empty: str                               # said in the panel when no run has any of its values
    mark_best_fid: bool = False              # star each run's best FID (report's best_fid, best_fid_kimg)
    ylim: Optional[tuple[float, float]] = None


PANELS = (
    Panel("Losses", "loss (tick mean)", STATS, (("Loss/D", "D", "-"), ("Loss/G", "G", "--")),
          "no loss statistics (stats.jsonl)"),
    Panel("D outputs", "D output (tick mean)", STATS, (("D/real", "D(real)", "-"), ("D/fake", "D(fake)", "--")),
          "no D output statistics (stats.jsonl)"),
    Panel("Diversity", "distance per pixel; ratio", STATS,
          (("Diversity/ratio", "fake/real", "-"), ("Diversity/fake", "fake", "--"), ("Diversity/real", "real", ":")),
          "no diversity statistics (stats.jsonl)"),
    Panel("FID", "FID", METRICS, (("fid", "FID", "-"),), "no FID evaluations (metrics.jsonl)", mark_best_fid=True),
    Panel("KID ×10³", "KID ×10³", METRICS, (("kid", "KID", "-"),), "no KID evaluations (metrics.jsonl)"),
    Panel("Precision / recall", "fraction", METRICS, (("precision", "precision", "-"), ("recall", "recall", "--")),
          "no precision/recall evaluations (metrics.jsonl)", ylim=(0.0, 1.02)),
)


def output_path(value: str) -> Path:
    """The file --plot names, checked before any run is read: its suffix chooses the format."""
    path = Path(value)
    if path.suffix.lower() not in FORMATS:
        raise PlotError(f"--plot {value}: the figure is written as PNG or SVG, chosen by the file's suffix; "
                        f"name a file ending in {' or '.join(FORMATS)} (e.g. --plot {path.with_suffix('.png')})")
    if not path.parent.is_dir():
        raise PlotError(f"--plot {value}: the directory {path.parent} does not exist; create it or name a file "
                        "in an existing directory")
    return path


def value(record: dict, key: str) -> tuple[Optional[float], Optional[float]]:
    """A record's number for `key` and its spread: a plain number, or a {"mean", "std"} summary (KID)."""
    v = record.get(key)
    if isinstance(v, dict):
        return number(v.get("mean")), number(v.get("std"))
    return number(v), None


def series(records: list[dict], key: str) -> tuple[list[float], list[float], list[Optional[float]]]:
    """kimg, value and spread of the records that hold both a kimg and a number for `key`."""
    xs, ys, spreads = [], [], []
    for r in records:
        x, (y, s) = number(r.get("kimg")), value(r, key)
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
            spreads.append(s)
    return xs, ys, spreads


def run_colours(n: int) -> list:
    """One colour per run, the same in every panel: tab10, tab20, then evenly spaced along turbo."""
    import matplotlib

    if n <= 20:
        cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
        return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(i / (n - 1)) for i in range(n)]


def _draw(ax, panel: Panel, rows: list[dict], records: list[dict], colours: list) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    styles: dict[str, str] = {}
    band = best = False
    for row, recs, colour in zip(rows, records, colours):
        for key, name, ls in panel.curves:
            xs, ys, spreads = series(recs[panel.source], key)
            if not xs:
                continue
            # Evaluations are few: mark each. A run with one tick would otherwise draw nothing.
            marker = "o" if panel.source == METRICS or len(xs) == 1 else None
            ax.plot(xs, ys, color=colour, ls=ls, lw=1.4, marker=marker, ms=3.5, label=f"{row['run']} {name}")
            styles[name] = ls
            if any(s is not None for s in spreads):
                lo = [y - (s or 0.0) for y, s in zip(ys, spreads)]
                hi = [y + (s or 0.0) for y, s in zip(ys, spreads)]
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.2, lw=0, label=f"{row['run']} {name} ± std")
                band = True
        if panel.mark_best_fid and row["best_fid"] is not None and row["best_fid_kimg"] is not None:
            ax.plot([row["best_fid_kimg"]], [row["best_fid"]], ls="none", marker="*", ms=15, color=colour,
                    mec="black", mew=0.8, zorder=5, label=f"{row['run']} best FID")
            best = True
    ax.set_title(panel.title)
    if not styles:
        ax.text(0.5, 0.5, panel.empty, transform=ax.transAxes, ha="center", va="center", color="0.35")
        ax.set_yticks([])
        return
    ax.set_ylabel(panel.ylabel)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.03, y=0.1)  # room for a best-FID star at the panel's edge
    if panel.ylim:
        ax.set_ylim(*panel.ylim)
    # The panel's legend explains its styles in grey; the figure's legend names the runs' colours.
    handles = [Line2D([], [], color="0.3", ls=ls, label=name) for name, ls in styles.items()]
    if band:
        handles.append(Patch(color="0.3", alpha=0.2, label="± std"))
    if best:
        handles.append(Line2D([], [], ls="none", marker="*", ms=12, color="0.3", mec="black", label="best"))
    ax.legend(handles=handles, fontsize="small")


def _wrap(name: str, width: int = 110) -> str:
    """A run's label (report.label: its sweep overrides) on lines of at most about `width`
    characters, broken between overrides, so that a long label stays inside the figure."""
    return textwrap.fill(name, width, break_long_words=False, break_on_hyphens=False)


def figure(rows: list[dict], title: str):
    """The matplotlib Figure of `rows` (report.collect's, in its order): six panels, one colour per run."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    records = [{name: list(read_jsonl(Path(r["run_dir"]) / name)) for name in (STATS, METRICS)} for r in rows]
    colours = run_colours(len(rows))
    names = [_wrap(label(r)) for r in rows]
    longest = max(len(line) for n in names for line in n.splitlines())
    legend_cols = 1 if len(rows) == 1 or longest > 70 else 2 if longest > 40 else 3
    legend_rows = sum(n.count("\n") + 1 for n in names) // legend_cols + 1
    fig = Figure(figsize=(12, 10 + 0.25 * legend_rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(3, 2, sharex=True).ravel()
    for ax, panel in zip(axes, PANELS):
        _draw(ax, panel, rows, records, colours)
    for ax in axes[-2:]:
        ax.set_xlabel("kimg")
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.legend(handles=[Line2D([], [], color=c, lw=2.5, label=n) for n, c in zip(names, colours)],
               loc="outside lower center", ncols=legend_cols, fontsize="small", frameon=False)
    fig.suptitle(f"{title} — {len(rows)} run{'' if len(rows) == 1 else 's'}")
    return fig


def save(rows: list[dict], title: str, out: Path) -> Path:
    """Draw `rows` and write the figure to `out` (checked by `output_path`), PNG or SVG by its suffix."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figure(rows, title)
    FigureCanvasAgg(fig)  # no display: Agg renders the PNG (the SVG backend takes over for .svg)
    try:
        fig.savefig(out, format=out.suffix.lower()[1:])
    except OSError as e:
        raise PlotError(f"--plot {out}: cannot write the figure ({e.strerror or e})") from None
    return out
