"""Plotting primitives on matplotlib's Agg backend (no display, no network). Each returns a new
`Figure`; the caller closes it (`r1vflow.reports.close_figures`). Figures are built with
`matplotlib.figure.Figure` directly, not pyplot, so nothing global is touched."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

Line = tuple[Sequence[float], Sequence[float]]  # (x, y)
SIZE = (5.4, 3.2)  # two figures side by side on a page
DPI = 100


def _figure(title: str, size: tuple[float, float] = SIZE) -> tuple[Figure, object]:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    return fig, ax


def line_chart(lines: Mapping[str, Line], title: str, ylabel: str, xlabel: str = "step",
               ylim: tuple[float, float] | None = None, steps: bool = False) -> Figure:
    """One line per label (x, y); `steps` draws step functions (0/1 flags)."""
    fig, ax = _figure(title)
    for label, (x, y) in lines.items():
        if steps:
            ax.step(list(x), list(y), where="mid", label=label)
        else:
            ax.plot(list(x), list(y), label=label, marker="." if len(x) < 30 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and iterations
    if ylim is not None:
        ax.set_ylim(*ylim)
    if len(lines) > 1:
        ax.legend(fontsize=8)
    return fig


def grouped_bars(groups: Mapping[str, Mapping[str, float]], title: str, ylabel: str,
                 ylim: tuple[float, float] | None = None) -> Figure:
    """Bars grouped by the outer key (x axis), one colour per inner key (legend); a bar's
    value is written above it."""
    fig, ax = _figure(title, (max(5.4, 1.2 * len(groups) + 2), 3.4))
    inner = list(dict.fromkeys(k for values in groups.values() for k in values))
    width = 0.8 / max(len(inner), 1)
    for j, key in enumerate(inner):
        xs = [i + (j - (len(inner) - 1) / 2) * width for i in range(len(groups))]
        ys = [groups[g].get(key, float("nan")) for g in groups]
        bars = ax.bar(xs, ys, width, label=key)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if len(inner) > 1:
        ax.legend(fontsize=8)
    return fig


def histograms(samples: Mapping[str, Sequence[float]], title: str, xlabel: str,
               bins: int = 20) -> Figure:
    """Overlaid histograms on shared bins."""
    fig, ax = _figure(title)
    values = [v for vs in samples.values() for v in vs]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    edges = [low + (high - low) * i / bins for i in range(bins + 1)] if high > low else bins
    for label, vs in samples.items():
        ax.hist(list(vs), bins=edges, alpha=0.55, label=f"{label} (n={len(vs)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    return fig


def chain_figure(nodes: Sequence[tuple[str, str, bool]], title: str) -> Figure:
    """A left-to-right chain of boxes (label, caption, highlighted), oldest first, joined by
    arrows: a model lineage."""
    fig = Figure(figsize=(max(6.4, 1.9 * len(nodes)), 1.8), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.set_axis_off()
    ax.set_xlim(-0.6, len(nodes) - 0.4)
    ax.set_ylim(-1, 1)
    for i, (label, caption, highlighted) in enumerate(nodes):
        ax.text(i, 0.15, label, ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "facecolor": "#cfe3ff" if highlighted else "#eeeeee"})
        ax.text(i, -0.55, caption, ha="center", va="center", fontsize=7)
        if i:
            ax.annotate("", xy=(i - 0.42, 0.15), xytext=(i - 0.58, 0.15),
                        arrowprops={"arrowstyle": "->"})
    return fig
