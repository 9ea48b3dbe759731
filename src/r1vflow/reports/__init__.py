"""Stage reports a person reads: a self-contained HTML page per stage (figures inlined as PNG,
no network), the same figures for MLflow, and a summary page for the pipeline run.

Pure functions over what a stage recorded (`ReportData`: its final metrics, its per-step metric
histories, and stage-specific extras); matplotlib's Agg backend draws. A stage with no figure
builder of its own still gets its loss and learning-rate curves and its metrics table; a new
stage plugs in with `@figure_builder("<stage>")` in `r1vflow.reports.stages`.

    from r1vflow.reports import ReportData, stage_page
    page = stage_page(ReportData("grpo", "tiny", metrics, history), markdown)
    page.html        # the page; page.figures: [(name, matplotlib Figure)] for mlflow.log_figure
"""

from r1vflow.reports.data import ReportData, headline_metric, series
from r1vflow.reports.page import StagePage, close_figures, stage_page, summary_page
from r1vflow.reports.stages import figure_builder, stage_figures

__all__ = ["ReportData", "StagePage", "close_figures", "figure_builder", "headline_metric",
           "series", "stage_figures", "stage_page", "summary_page"]
