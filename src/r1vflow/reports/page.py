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


def _stage_rows(stages: Mapping[str, Mapping[str, Any]], links: Mapping[str, str]) -> str:
    rows = []
    for stage, entry in stages.items():
        found = headline_metric(entry.get("metrics") or {})
        metric = (f'{escape(found[0])} = <span data-metric="{escape(stage)}:{escape(found[0])}">'
                  f"{format_value(found[1])}</span>") if found else ""
        name = (f'<a href="{escape(links[stage])}">{escape(stage)}</a>' if stage in links
                else escape(stage))
        cached = " (cached)" if entry.get("cached") else ""
        seconds = format_value(float(entry.get("seconds") or 0))
        if entry.get("cached"):  # no task ran: the time is that of the run that produced it
            seconds += " <small>(first run; cached now)</small>"
        rows.append(f"<tr><td>{name}</td><td>{escape(str(entry.get('status')))}{cached}</td>"
                    f'<td class="value">{seconds}</td><td>{metric}</td></tr>')
    return ("<table><tr><th>stage</th><th>status</th><th>seconds</th><th>headline</th></tr>"
            f"{''.join(rows)}</table>")


def _benchmark_table(metrics: Mapping[str, Any]) -> str:
    """Published benchmarks (evaluate's `bench/<name>/accuracy/<model>` and `.../n/<model>`):
    one row per benchmark, one column per model, accuracy (n)."""
    scores: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[0] == "bench" and parts[2] == "accuracy":
            scores.setdefault(parts[1], {})[parts[3]] = float(value)
    if not scores:
        return ""
    models = list(dict.fromkeys(m for row in scores.values() for m in row))
    head = "".join(f"<th>{escape(m)}</th>" for m in models)
    rows = []
    for bench, row in scores.items():
        cells = []
        for model in models:
            if model not in row:
                cells.append("<td></td>")
                continue
            key = f"bench/{bench}/accuracy/{model}"
            n = metrics.get(f"bench/{bench}/n/{model}")
            count = f" <small>(n={n:.0f})</small>" if n is not None else ""
            cells.append(f'<td class="value"><span data-metric="evaluate:{escape(key)}">'
                         f"{format_value(row[model])}</span>{count}</td>")
        rows.append(f"<tr><td>{escape(bench)}</td>{''.join(cells)}</tr>")
    return (f"<h2>Benchmarks (accuracy)</h2><table><tr><th>benchmark</th>{head}</tr>"
            f"{''.join(rows)}</table>")


def _promotion_html(promotion: Mapping[str, Any] | None) -> str:
    if not promotion:
        return "<p>No promotion gate ran (no registered candidate).</p>"
    if promotion.get("error"):
        return f"<p>Promotion unknown: {escape(str(promotion['error']))}</p>"
    if promotion.get("promoted"):
        verdict = f"promoted: {promotion.get('candidate')} is the new champion"
    elif promotion.get("already_champion"):
        verdict = f"{promotion.get('candidate')} is already the champion"
    else:
        verdict = (f"not promoted: the champion stays {promotion.get('champion') or '(none)'}, "
                   f"candidate {promotion.get('candidate')}")
    reason = promotion.get("decision")
    because = f"<br><small>gate: {escape(str(reason))}</small>" if reason else ""
    return f'<p class="headline" id="promotion">{escape(verdict)}{because}</p>'


def _run_facts(experiment: str, run: Mapping[str, Any]) -> str:
    facts = [("experiment", experiment),
             ("MLflow parent run", run.get("parent_run_id")),
             ("config fingerprint", run.get("fingerprint")),
             ("status", run.get("status")),
             ("seconds", run.get("seconds")),
             ("tracking URI", run.get("tracking_uri"))]
    rows = "".join(f"<tr><th>{escape(k)}</th><td><code>{escape(str(v))}</code></td></tr>"
                   for k, v in facts if v is not None)
    body = f'<table id="run">{rows}</table>'
    body += f"<h2>Promotion</h2>{_promotion_html(run.get('promotion'))}"
    if run.get("config"):
        import yaml

        text = yaml.safe_dump(run["config"], sort_keys=False, default_flow_style=False)
        body += (f'<details id="config"><summary>config (fingerprint '
                 f'{escape(str(run.get("fingerprint", ""))[:16])})</summary>'
                 f"<pre>{escape(text)}</pre></details>")
    return body


def summary_page(experiment: str, stages: Mapping[str, Mapping[str, Any]],
                 links: Mapping[str, str] | None = None,
                 run: Mapping[str, Any] | None = None) -> StagePage:
    """The pipeline run's page from summary.json: with `run` (parent_run_id, fingerprint,
    status, seconds, tracking_uri, promotion, config) the run's facts, the promotion verdict
    and the config (collapsed); each stage's status (cached ones labelled, with the time of
    the run that produced them), seconds and headline metric (linked to its page when `links`
    names one); the published benchmarks' scores; the accuracy of every evaluated model and
    the seconds per stage."""
    links = links or {}
    evaluation = (stages.get("evaluate") or {}).get("metrics") or {}
    figures = []
    table = accuracy_table(evaluation)
    if table:
        figures.append(("accuracy", grouped_bars(
            table, f"{experiment}: accuracy per model and family", "accuracy", ylim=(0, 1.1))))
    seconds = {(f"{s}\n(cached)" if e.get("cached") else s):
               {"seconds": float(e.get("seconds") or 0)} for s, e in stages.items()}
    if seconds:
        cached = any(e.get("cached") for e in stages.values())
        note = " (cached: the first run's time)" if cached else ""
        figures.append(("seconds", grouped_bars(seconds, f"{experiment}: seconds per stage{note}",
                                                "seconds")))
    title = f"pipeline run: {experiment}"
    body = (f"<h1>{escape(title)}</h1>{_run_facts(experiment, run) if run else ''}"
            f"<h2>Stages</h2>{_stage_rows(stages, links)}{_benchmark_table(evaluation)}"
            f"<h2>Figures</h2>{_figures_html(figures)}")
    return StagePage(_page(title, body), figures)
