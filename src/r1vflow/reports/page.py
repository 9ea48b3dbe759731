"""Self-contained HTML pages: figures inlined as base64 PNG, inline CSS, nothing fetched.

Every metric value on a page sits in an element with `data-metric="<key>"` whose text is
`format_value(value)`, so a reader (or a browser test) can check it against summary.json.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from matplotlib.figure import Figure

from r1vflow.reports.benchmarks import stage_lead
from r1vflow.reports.data import ReportData, format_value, headline_metric
from r1vflow.reports.figures import grouped_bars
from r1vflow.reports.stages import accuracy_table, stage_figures

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.4em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:2px 8px}
td.value{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}figcaption{font-size:.8em;color:#555}
.headline{font-size:1.1em}pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:.8em}
"""


@dataclass
class StagePage:
    html: str
    figures: list[tuple[str, Figure]] = field(default_factory=list)


def png_base64(fig: Figure) -> str:
    """The figure as a base64 PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def close_figures(figures: Sequence[tuple[str, Figure]]) -> None:
    """Release the figures' memory (Figure objects are not tracked by pyplot)."""
    for _, fig in figures:
        fig.clear()


def _metrics_table(metrics: Mapping[str, float]) -> str:
    rows = "".join(f'<tr><td>{escape(k)}</td><td class="value" data-metric="{escape(k)}">'
                   f"{format_value(v)}</td></tr>" for k, v in metrics.items())
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def _figures_html(figures: Sequence[tuple[str, Figure]]) -> str:
    items = "".join(f'<figure><img alt="{escape(name)}" src="data:image/png;base64,'
                    f'{png_base64(fig)}"><figcaption>{escape(name)}</figcaption></figure>'
                    for name, fig in figures)
    return f'<div class="figs">{items}</div>' if items else "<p>(no figures)</p>"


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>'
            f"{escape(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n")


def _headline_html(metrics: Mapping[str, float]) -> str:
    found = headline_metric(metrics)
    if found is None:
        return ""
    key, value = found
    return (f'<p class="headline">{escape(key)} = <b data-metric="{escape(key)}">'
            f"{format_value(value)}</b></p>")


def stage_page(data: ReportData, markdown: str = "") -> StagePage:
    """One stage's page: headline metric, figures, every metric, the Markdown as plain text."""
    lead, lead_figures = stage_lead(data)  # evaluate: the benchmark table and its chart
    figures = stage_figures(data)
    title = f"{data.stage}: {data.experiment}"
    body = (f"<h1>{escape(title)}</h1>"
            + (lead + _figures_html(lead_figures) if lead else "")
            + f"{_headline_html(data.metrics)}"
            f"<h2>Figures</h2>{_figures_html(figures)}"
            f"<h2>Metrics</h2>{_metrics_table(data.metrics)}")
    if markdown:
        body += f"<h2>Report (plain text)</h2><pre>{escape(markdown)}</pre>"
    return StagePage(_page(title, body), lead_figures + figures)


def summary_page(experiment: str, stages: Mapping[str, Mapping[str, Any]],
                 links: Mapping[str, str] | None = None) -> StagePage:
    """The pipeline run's page from summary.json's `stages`: each stage's status, seconds and
    headline metric (linked to its page when `links` names one), the accuracy of every
    evaluated model, and the seconds per stage."""
    links = links or {}
    rows = []
    for stage, entry in stages.items():
        found = headline_metric(entry.get("metrics") or {})
        metric = (f'{escape(found[0])} = <span data-metric="{escape(stage)}:{escape(found[0])}">'
                  f"{format_value(found[1])}</span>") if found else ""
        name = (f'<a href="{escape(links[stage])}">{escape(stage)}</a>' if stage in links
                else escape(stage))
        cached = " (cached)" if entry.get("cached") else ""
        rows.append(f"<tr><td>{name}</td><td>{escape(str(entry.get('status')))}{cached}</td>"
                    f'<td class="value">{format_value(float(entry.get("seconds") or 0))}</td>'
                    f"<td>{metric}</td></tr>")
    figures = []
    table = accuracy_table((stages.get("evaluate") or {}).get("metrics") or {})
    if table:
        figures.append(("accuracy", grouped_bars(
            table, f"{experiment}: accuracy per model and family", "accuracy", ylim=(0, 1.1))))
    seconds = {s: {"seconds": float(e.get("seconds") or 0)} for s, e in stages.items()}
    if seconds:
        figures.append(("seconds", grouped_bars(seconds, f"{experiment}: seconds per stage",
                                                "seconds")))
    title = f"pipeline run: {experiment}"
    body = (f"<h1>{escape(title)}</h1><table><tr><th>stage</th><th>status</th><th>seconds</th>"
            f"<th>headline</th></tr>{''.join(rows)}</table>"
            f"<h2>Figures</h2>{_figures_html(figures)}")
    return StagePage(_page(title, body), figures)
