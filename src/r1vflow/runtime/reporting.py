"""A stage's report where people look: the KFP UI (an HTML artifact next to the Markdown one),
MLflow (the figures, the page, a readable run name and description) and the run directory
(`<output-dir>/reports/<stage>.html`). One call per stage, from `runtime.execute`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from r1vflow.reports import ReportData, close_figures, headline_metric, stage_page, summary_page
from r1vflow.stages import StageContext, StageOutcome

ARTIFACT_DIR = "report"  # in the stage's MLflow run: report.html, report.md, <figure>.png
RUN_DIR_ENV = "R1VFLOW_RUN_DIR"  # the driver's output dir; stage results are mirrored there


def run_title(stage: str, experiment: str, metrics: dict[str, float]) -> str:
    """A stage run's name: stage, experiment and the headline metric."""
    found = headline_metric(metrics)
    return f"{stage} · {experiment}" + (f" · {found[0]} {found[1]:.3g}" if found else "")


def run_description(stage: str, experiment: str, metrics: dict[str, float],
                    model_version: str | None) -> str:
    """The stage run's Markdown description (MLflow shows it on the run page)."""
    found = headline_metric(metrics)
    lines = [f"**{stage}** stage of the r1vflow experiment **{experiment}**."]
    if found:
        lines.append(f"Headline: `{found[0]}` = **{found[1]:.4g}**.")
    if model_version:
        lines.append(f"Model: `{model_version}` (registered model version).")
    lines.append(f"Report: `{ARTIFACT_DIR}/report.html` in this run's artifacts, with its "
                 "figures beside it.")
    return "\n\n".join(lines)


def publish_report(ctx: StageContext, outcome: StageOutcome, markdown_artifact: Any = None,
                   html_artifact: Any = None) -> Path | None:
    """Render the stage's page from its metrics, histories and extras; write it to the KFP
    HTML artifact (else to the run directory only) and the Markdown to the Markdown artifact;
    log the figures, the page and the Markdown to the stage's MLflow run and name and describe
    the run. Returns where the HTML was written: the HTML artifact, else
    `$R1VFLOW_RUN_DIR/reports/<stage>.html`, else nowhere (None). The local runner copies
    every stage's page into `<output-dir>/reports/`."""
    markdown = outcome.report or f"# {ctx.stage}\n\n(no report)\n"
    data = ReportData(ctx.stage, ctx.exp.name, dict(outcome.metrics),
                      {**ctx.tracker.history, **outcome.history}, dict(outcome.report_data))
    page = stage_page(data, markdown)
    try:
        for name, figure in page.figures:
            ctx.tracker.log_figure(figure, f"{ARTIFACT_DIR}/{name}.png")
    finally:
        close_figures(page.figures)
    ctx.tracker.log_text(page.html, f"{ARTIFACT_DIR}/report.html")
    ctx.tracker.log_text(markdown, f"{ARTIFACT_DIR}/report.md")
    ctx.tracker.describe(run_title(ctx.stage, ctx.exp.name, outcome.metrics),
                         run_description(ctx.stage, ctx.exp.name, outcome.metrics,
                                         outcome.model_version))
    if markdown_artifact is not None:
        _write(Path(markdown_artifact.path), markdown)
    if html_artifact is not None:
        return _write(Path(html_artifact.path), page.html)
    run_dir = os.environ.get(RUN_DIR_ENV)  # a component without an HTML output
    return _write(Path(run_dir) / "reports" / f"{ctx.stage}.html", page.html) if run_dir else None


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def publish_summary(output_dir: Path, experiment: str, stages: dict[str, dict[str, Any]],
                    tracking_uri: str | None = None, parent_run_id: str | None = None,
                    run: dict[str, Any] | None = None) -> Path:
    """The pipeline run's pages in `<output_dir>/reports/`: every stage's page copied there
    (cached stages' too) as `<stage>.html`, and `summary.html` linking them (with `run`, the
    run's facts, promotion and config: r1vflow.reports.summary_page); with a parent run, the
    summary page, its figures and a description go to the parent run. Records each copied
    page as `report` in its `stages` entry; returns the summary page's path."""
    folder = output_dir / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    links = {}
    for stage, entry in stages.items():
        source = entry.pop("report_html", None)
        target = folder / f"{stage}.html"
        if source and Path(source).is_file():
            if Path(source).resolve() != target.resolve():
                target.write_text(Path(source).read_text())
            entry["report"] = str(target)
            links[stage] = target.name
    page = summary_page(experiment, stages, links, run)
    path = _write(folder / "summary.html", page.html)
    try:
        if tracking_uri and parent_run_id:
            _log_summary(tracking_uri, parent_run_id, experiment, stages, page)
    finally:
        close_figures(page.figures)
    return path


def _log_summary(tracking_uri: str, parent_run_id: str, experiment: str,
                 stages: dict[str, dict[str, Any]], page) -> None:
    from r1vflow.tracking.client import mlflow_client

    client = mlflow_client(tracking_uri)
    for name, figure in page.figures:
        client.log_figure(parent_run_id, figure, f"{ARTIFACT_DIR}/{name}.png")
    client.log_text(parent_run_id, page.html, f"{ARTIFACT_DIR}/summary.html")
    client.set_tag(parent_run_id, "mlflow.note.content", _summary_description(experiment, stages))


_NOT_STAGE_METRICS = ("train/", "system/", "stage_seconds")


def stages_from_runs(tracking_uri: str, parent_run_id: str) -> dict[str, dict[str, Any]]:
    """summary.json's `stages` rebuilt from the parent run's stage runs in MLflow (where no
    driver wrote one: a KFP run on a cluster), in the stage table's order: status, seconds
    (`stage_seconds`) and the final metrics (per-step `train/*` and `system/*` left out)."""
    from r1vflow.config import STAGES
    from r1vflow.tracking.client import mlflow_client

    client = mlflow_client(tracking_uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id], max_results=500,
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    found = {}
    for run in sorted(children, key=lambda r: r.info.start_time):  # a retried stage: the last
        metrics = run.data.metrics
        found[run.data.tags.get("r1vflow.stage", run.info.run_name)] = {
            "status": {"FINISHED": "succeeded", "FAILED": "failed"}.get(run.info.status,
                                                                         run.info.status.lower()),
            "seconds": metrics.get("stage_seconds", 0.0),
            "metrics": {k: v for k, v in metrics.items() if not k.startswith(_NOT_STAGE_METRICS)}}
    order = [s for s in STAGES if s in found] + sorted(set(found) - set(STAGES))
    return {stage: found[stage] for stage in order}


def publish_parent_summary(tracking_uri: str, parent_run_id: str, experiment: str) -> None:
    """The summary page, its figures and description on the parent run, from MLflow alone."""
    stages = stages_from_runs(tracking_uri, parent_run_id)
    page = summary_page(experiment, stages)
    try:
        _log_summary(tracking_uri, parent_run_id, experiment, stages, page)
    finally:
        close_figures(page.figures)


def _summary_description(experiment: str, stages: dict[str, dict[str, Any]]) -> str:
    ok = sum(entry.get("status") == "succeeded" for entry in stages.values())
    lines = [f"r1vflow pipeline run of **{experiment}**: {ok} of {len(stages)} stages "
             "succeeded. Each stage is a child run; its page is `report/report.html` there.", ""]
    for stage, entry in stages.items():
        found = headline_metric(entry.get("metrics") or {})
        headline = f"`{found[0]}` = {found[1]:.4g}" if found else ""
        lines.append(f"- **{stage}** ({entry.get('status')}): {headline}")
    lines += ["", f"Summary page: `{ARTIFACT_DIR}/summary.html`."]
    return "\n".join(lines)


def summarize_parent(tracking_uri: str | None, stage: str, experiment: str,
                     environ: dict[str, str] | None = None) -> bool:
    """On a cluster, after the last stage: the parent run's summary page (the local driver
    writes it itself). Never raises: the stages' own results are already recorded; a failure
    is a warning in the task's log. Returns whether a page was logged."""
    import logging

    from r1vflow.config import STAGES
    from r1vflow.storage.scratch import on_cluster
    from r1vflow.tracking.runs import PARENT_ENV

    env = os.environ if environ is None else environ
    parent = env.get(PARENT_ENV)
    if not (tracking_uri and parent and stage == STAGES[-1] and on_cluster(env)):
        return False
    try:
        publish_parent_summary(tracking_uri, parent, experiment)
    except Exception as err:  # noqa: BLE001 (reported, not raised: see docstring)
        logging.getLogger(__name__).warning("no summary page on the parent run %s: %s",
                                            parent, err)
        return False
    return True
