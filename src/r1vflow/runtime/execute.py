"""Shared body of every stage component: parse the experiment, open the stage's MLflow run, call the
stage function, and write the KFP outputs (Metrics, a Markdown report, the StageResult JSON).

Kept out of the component functions themselves so that each component stays a few lines and this
logic is tested once, without KFP.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from r1vflow.config import STAGES, Experiment, flatten
from r1vflow.config.slicing import experiment_from_slice
from r1vflow.config.stage_table import stage as stage_spec
from r1vflow.runtime.cluster import attach_parent_run, report_to_parent
from r1vflow.runtime.launch import run_stage
from r1vflow.runtime.reporting import RUN_DIR_ENV, publish_report, summarize_parent
from r1vflow.stages import StageContext, StageOutcome, StageResult
from r1vflow.storage.atomic import write_text
from r1vflow.storage.pointers import experiment_store, resolve_input, write_pointer
from r1vflow.storage.scratch import scratch_dir
from r1vflow.storage.settings import tracking_uri_from_env
from r1vflow.tracking.runs import StageTracker, experiment_name, stage_run, unreachable


def _stage_params(config: dict[str, Any], exp: Experiment) -> dict[str, Any]:
    """MLflow params of a stage run: exactly the config slice the task received."""
    sections = {k: v for k, v in config.items() if k != "name" and v is not None}
    return {**flatten(sections), "experiment": exp.name, "config_fingerprint": exp.fingerprint()}


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics with a number: an undefined one (NaN, e.g. a rank correlation over fewer than
    two points; or infinite) is left out, saying so, since KFP's metrics cannot hold it and
    summary.json would carry a bare NaN."""
    kept = {k: v for k, v in metrics.items() if math.isfinite(v)}
    for key in metrics.keys() - kept.keys():
        print(f"metric {key} is undefined ({metrics[key]}) and left out")
    return kept


def _write_kfp_outputs(result: StageResult, metrics_artifact: Any) -> None:
    if metrics_artifact is not None:
        for key, value in result.metrics.items():
            metrics_artifact.log_metric(key, value)
        # kfp.local treats an output artifact without a file as missing and never serves the task
        # from its cache; KFP on a cluster uploads this file alongside the metadata.
        Path(metrics_artifact.path).parent.mkdir(parents=True, exist_ok=True)
        write_text(metrics_artifact.path, json.dumps(result.metrics, indent=2, sort_keys=True))


def _mirror(result: StageResult) -> None:
    run_dir = os.environ.get(RUN_DIR_ENV)
    if run_dir:
        out = Path(run_dir) / "stages"
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / f"{result.stage}.json", result.model_dump_json(indent=2))


def tracking_env(exp: Experiment) -> str | None:
    """Point MLflow at the experiment's tracking URI (config, else the environment)."""
    uri = exp.tracking.tracking_uri or tracking_uri_from_env()
    if uri:
        import mlflow

        mlflow.set_tracking_uri(uri)
    return uri


def _log_dataset_input(ctx: StageContext) -> None:
    """Every stage that reads the synthesized data set records it (with its digest) as input."""
    dataset = ctx.inputs.get("dataset")
    info = dataset / "dataset.json" if dataset else None
    if info is not None and info.is_file():
        digest = json.loads(info.read_text())["digest"]
        kind = ctx.exp.data.source.kind  # synthetic, files or hub
        ctx.tracker.log_dataset(f"{ctx.exp.name}-{kind}", digest, str(dataset), "training")


def _copy_with_pointers(work: Path, real: Path, published: dict[Path, dict]) -> None:
    """Copy `work` into the KFP artifact `real`, with a pointer file in place of every
    directory that was published (a model, sft's iterations): the bytes
    stay in the object store."""
    pointer = published.get(work.resolve())
    if pointer is not None:
        write_pointer(real, pointer)
        return
    real.mkdir(parents=True, exist_ok=True)
    for child in sorted(work.iterdir()):
        if child.is_dir():
            _copy_with_pointers(child, real / child.name, published)
        else:
            shutil.copy2(child, real / child.name)


def _finish_outputs(ctx: StageContext, artifacts: dict[str, Path],
                    model_dir: Path | None) -> str | None:
    """Move scratch outputs into their KFP artifacts: a pointer for what was published, the
    files themselves for the rest. Returns the produced model's URI."""
    for name, real in artifacts.items():
        work = ctx.outputs[name].resolve()
        if work == real.resolve():
            continue
        _copy_with_pointers(work, real, ctx.published)
        shutil.rmtree(work, ignore_errors=True)
    if model_dir is None:
        return None
    pointer = ctx.published.get(Path(model_dir).resolve())
    return pointer["uri"] if pointer else str(Path(model_dir).resolve())


def _parse(stage: str, experiment_json: str) -> Experiment:
    """The task's experiment; a config it refuses is mirrored as the stage's failure (the
    driver reads why: a config error is not worth a retry) and raised."""
    try:
        return experiment_from_slice(experiment_json)
    except Exception as err:
        _mirror(StageResult(stage=stage, status="failed", seconds=0.0,
                            error=f"{type(err).__name__}: {err}"))
        raise


def _reachable_tracking(exp: Experiment) -> str | None:
    """The tracking URI (config, else the environment), refused at once when MLflow does not
    answer (instead of MLflow's minutes of retries and a long traceback); on a cluster the KFP
    run's MLflow parent run is found or created (a no-op locally)."""
    tracking_uri = exp.tracking.tracking_uri or tracking_uri_from_env()
    problem = unreachable(tracking_uri) if tracking_uri else None
    if problem:
        raise RuntimeError(problem)
    attach_parent_run(tracking_uri, _mlflow_experiment(exp), exp.name, exp.fingerprint())
    return tracking_uri


def _mlflow_experiment(exp: Experiment) -> str:
    return experiment_name(exp.name, exp.tracking.experiment_name)


def _open_stage_run(stage: str, exp: Experiment, tracking_uri: str | None):
    """The stage's nested MLflow run (system metrics for the stages that make a model)."""
    return stage_run(tracking_uri, _mlflow_experiment(exp), stage, exp.name,
                     register=exp.tracking.register_models,
                     system_metrics=stage_spec(stage).model_output is not None)


def _context(stage: str, exp: Experiment, tracker: StageTracker, inputs: dict[str, str | None],
             artifacts: dict[str, Path]) -> StageContext:
    """The stage's context: inputs resolved (pointers fetched into the cache), outputs made.
    With an object store, outputs are written to scratch and published; the KFP artifacts then
    hold pointers (see r1vflow.storage.pointers)."""
    store = experiment_store(exp)
    work = {k: scratch_dir(stage, k) for k in artifacts} if store else artifacts
    ctx = StageContext(
        exp=exp, stage=stage,
        inputs={k: resolve_input(Path(v)) for k, v in inputs.items() if v is not None},
        outputs=work, store=store,
        tracker=tracker,
        extra_tags={"r1vflow.kfp_run": os.environ.get("R1VFLOW_KFP_RUN", ""),
                    "r1vflow.git_commit": os.environ.get("R1VFLOW_GIT_COMMIT", "")},
    )
    for path in ctx.outputs.values():
        path.mkdir(parents=True, exist_ok=True)
    return ctx


def _run(ctx: StageContext, tracking_uri: str | None) -> StageOutcome:
    """The stage itself: nodes x procs_per_node > 1 runs under torchrun here or as a TrainJob
    (r1vflow.runtime.launch); undefined metrics are left out."""
    outcome = run_stage(ctx, ctx.exp.resources.get(ctx.stage), tracking_uri)
    outcome.metrics = finite_metrics(outcome.metrics)
    return outcome


def _close_run(tracker: StageTracker, outcome: StageOutcome, started: float) -> tuple[float, int]:
    """Log the final metrics and the stage's seconds, then send what an MLflow outage buffered;
    (seconds, metric values MLflow never received)."""
    seconds = time.time() - started
    tracker.log_metrics({**outcome.metrics, "stage_seconds": seconds})
    return seconds, tracker.reconcile()


def _failed(stage: str, exp: Experiment, started: float, tracker: StageTracker | None,
            err: Exception) -> None:
    """Mirror the failure, tell the parent run, print the traceback."""
    _mirror(StageResult(stage=stage, status="failed", seconds=round(time.time() - started, 3),
                        mlflow_run_id=tracker.run_id if tracker is not None else None,
                        error=f"{type(err).__name__}: {err}"))
    report_to_parent(exp.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
                     stage, "failed", {}, last_stage=False)
    traceback.print_exc()


def _succeeded(result: StageResult, exp: Experiment, tracking_uri: str | None,
               metrics_artifact: Any) -> None:
    """Tell the parent run (and, on a cluster after the last stage, summarize it), then write
    the KFP Metrics and mirror the result."""
    report_to_parent(tracking_uri, result.stage, "succeeded", result.metrics,
                     last_stage=result.stage == STAGES[-1])
    summarize_parent(tracking_uri, result.stage, exp.name)  # on a cluster, after the last stage
    _write_kfp_outputs(result, metrics_artifact)
    _mirror(result)


def execute(stage: str, experiment_json: str, inputs: dict[str, str | None],
            outputs: dict[str, str], metrics: Any = None, report: Any = None,
            html_report: Any = None) -> str:
    """Run one stage inside a component; returns the StageResult as JSON (the task's output).

    `experiment_json` is the stage's config slice (r1vflow.config.slicing), or a whole
    experiment. `report` (Markdown) and `html_report` (HTML) are the KFP report artifacts
    (r1vflow.runtime.reporting)."""
    exp = _parse(stage, experiment_json)
    started, tracker = time.time(), None
    try:
        tracking_uri = _reachable_tracking(exp)
        with _open_stage_run(stage, exp, tracking_uri) as tracker:
            tracker.log_params(_stage_params(json.loads(experiment_json), exp))
            artifacts = {k: Path(v) for k, v in outputs.items()}
            ctx = _context(stage, exp, tracker, inputs, artifacts)
            _log_dataset_input(ctx)
            outcome = _run(ctx, tracking_uri)
            model_uri = _finish_outputs(ctx, artifacts, outcome.model_dir)
            page = publish_report(ctx, outcome, report, html_report)
            seconds, unlogged = _close_run(tracker, outcome, started)
        result = StageResult(
            stage=stage, status="succeeded", seconds=round(seconds, 3), metrics=outcome.metrics,
            model_uri=model_uri, unlogged_metrics=unlogged or None,
            model_version=outcome.model_version, mlflow_run_id=tracker.run_id,
            outputs={k: str(v) for k, v in outputs.items()},
            task_dir=str(Path(metrics.path).parent) if metrics is not None else None,
            report_html=str(page) if page else None,
        )
    except Exception as err:
        _failed(stage, exp, started, tracker, err)
        raise
    _succeeded(result, exp, tracking_uri, metrics)
    return result.model_dump_json()
