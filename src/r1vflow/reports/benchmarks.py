"""What the evaluate page leads with: the published benchmarks, models x benchmarks, next to
the reports' numbers for the released R1V / R1V2 models, and a bar chart of the same.

Reads the evaluate stage's extra ``benchmarks`` (r1vflow.eval.benchmarks.suite.benchmark_rows:
per benchmark its split, n, samples, ``scores`` {model: pass@1 %} and ``published``
{reference column title: the report's %}). Every score cell carries ``data-bench="<benchmark>/<model>"`` and
shows the value to one decimal, so a browser test can check it against summary.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from r1vflow.reports.data import ReportData
from r1vflow.reports.figures import grouped_bars

CAPTION = ("pass@1 in %, averaged over each benchmark's samples; the last two columns are the "
           "numbers the Skywork R1V and R1V2 reports give for their released 38B models "
           "(- where a report gives none).")


def _cell(value: float | None, bench: str = "", model: str = "") -> str:
    text = "-" if value is None else f"{value:.1f}"
    attr = f' data-bench="{escape(bench)}/{escape(model)}"' if model else ""
    return f'<td class="value"{attr}>{text}</td>'


def benchmark_table_html(rows: list[Mapping]) -> str:
    """The models x benchmarks table (one row per benchmark, one column per model, then the
    reports' reference columns)."""
    labels, references = list(rows[0]["scores"]), list(rows[0]["published"])
    head = "".join(f"<th>{escape(h)}</th>" for h in
                   ("benchmark", "split", "n", "samples", *labels, *references))
    body = ""
    for row in rows:
        name = row["benchmark"]
        cells = "".join(_cell(row["scores"][lab], name, lab) for lab in labels)
        cells += "".join(_cell(row["published"].get(title)) for title in references)
        body += (f"<tr><td>{escape(name)}</td><td>{escape(str(row['split']))}</td>"
                 f'<td class="value">{row["n"]}</td><td class="value">{row["samples"]}</td>'
                 f"{cells}</tr>")
    return (f'<table id="benchmarks"><tr>{head}</tr>{body}</table>'
            f"<p><small>{escape(CAPTION)}</small></p>")


def benchmark_chart(rows: list[Mapping], title: str):
    """Grouped bars: per benchmark, each model's score and the reports' numbers."""
    groups = {row["benchmark"]: {k: v for k, v in {**row["scores"], **row["published"]}.items()
                                 if v is not None} for row in rows}
    return grouped_bars(groups, title, "pass@1 (%)", ylim=(0, 105))


def stage_lead(data: ReportData) -> tuple[str, list]:
    """(HTML, figures) a stage's page opens with: for evaluate with published benchmarks, the
    table and its chart; nothing for other stages."""
    rows = data.extra.get("benchmarks") if data.stage == "evaluate" else None
    if not rows:
        return "", []
    figure = benchmark_chart(rows, f"{data.experiment}: published benchmarks")
    return (f"<h2>Published benchmarks</h2>{benchmark_table_html(rows)}",
            [("benchmarks", figure)])
