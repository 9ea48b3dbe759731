"""Run an experiment's DAG on this machine through the KFP SDK's local runner.

Every task is a subprocess of this Python (SubprocessRunner, no container), caching is on, and the
pipeline root and cache live in the output dir, so running the same experiment into the same
directory again is served from cache. The driver opens the MLflow parent run, hands its id to the
tasks through the environment, and writes `<output-dir>/summary.json`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from r1vflow.config import Experiment
from r1vflow.pipelines.dag import build_pipeline, pipeline_name
from r1vflow.runtime.execute import RUN_DIR_ENV
from r1vflow.tracking import runs as tracking


def _stage_entries(exp: Experiment, outputs: dict[str, str], run_dir: Path,
                   new_dirs: list[Path]) -> dict[str, dict[str, Any]]:
    """Per stage: the task's StageResult (cached tasks included), else the mirrored failure.

    A task served from KFP's cache returns the result of the run that computed it, whose output
    paths lie outside this run's new pipeline-root directories: that is how `cached` is told."""
    entries: dict[str, dict[str, Any]] = {}
    for stage in exp.stages():
        raw = outputs.get(stage)
        mirrored = run_dir / "stages" / f"{stage}.json"
        if raw:
            result = json.loads(raw)
            paths = list(result.get("outputs", {}).values()) + [result.get("task_dir") or ""]
            paths = [p for p in paths if p]
            result["cached"] = bool(paths) and not any(
                Path(p).is_relative_to(d) for p in paths for d in new_dirs)
        elif mirrored.exists():  # the pipeline failed: its outputs are missing, the mirror is not
            result = json.loads(mirrored.read_text())
        else:
            result = {"stage": stage, "status": "not_run", "seconds": 0.0, "metrics": {}}
        entries[stage] = {k: result.get(k) for k in (
            "status", "seconds", "metrics", "model_uri", "model_version", "mlflow_run_id",
            "cached", "error") if result.get(k) is not None}
    return entries


def _promotion(tracking_uri: str, evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """The candidate evaluate named and where the champion alias points after the gate."""
    candidate = evaluation.get("model_version")
    if not candidate:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    name = candidate.rsplit("/", 1)[0]
    try:
        champion = mlflow.MlflowClient().get_model_version_by_alias(name, "champion").version
    except MlflowException:
        champion = None
    return {"candidate": candidate, "champion": f"{name}/{champion}" if champion else None,
            "promoted": champion is not None and f"{name}/{champion}" == candidate}


def run_local(exp: Experiment, output_dir: Path, experiment_file: str | None = None,
              quiet: bool = False, overrides: list[str] | None = None,
              applied: list[str] | None = None) -> dict[str, Any]:
    """Run the DAG. `overrides` go to the pipeline's `overrides` parameter (applied and
    validated by its configure task, as in a KFP UI run); `applied` are the `--set` values
    already in `exp`, recorded on the parent run like the others."""
    from kfp import local

    started = time.time()
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "stages").mkdir(exist_ok=True)
    for stale in (output_dir / "stages").glob("*.json"):
        stale.unlink()
    tracking_uri = tracking.default_tracking_uri(output_dir, exp.tracking.tracking_uri)
    mlflow_experiment = tracking.experiment_name(exp.name, exp.tracking.experiment_name)
    commit = tracking.git_commit()
    fingerprint = exp.fingerprint()
    parent_tags = {
        "r1vflow.config_fingerprint": fingerprint,
        "r1vflow.pipeline": pipeline_name(exp),
        "r1vflow.git_commit": commit or "",
        "r1vflow.experiment_file": experiment_file or "",
        "r1vflow.output_dir": str(output_dir),
        "r1vflow.overrides": json.dumps([*(applied or []), *(overrides or [])]),
    }
    parent_id = tracking.start_parent_run(tracking_uri, mlflow_experiment, exp.name, parent_tags)
    os.environ.update({
        "MLFLOW_TRACKING_URI": tracking_uri,
        tracking.PARENT_ENV: parent_id,
        RUN_DIR_ENV: str(output_dir),
        "R1VFLOW_GIT_COMMIT": commit or "",
        "R1VFLOW_KFP_RUN": f"local:{parent_id}",
    })
    pipeline_root = output_dir / "pipeline_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               cache_root=str(output_dir / "kfp_cache"), enable_caching=True, raise_on_error=False)
    if quiet:
        logging.getLogger().setLevel(logging.WARNING)
    before = set(pipeline_root.glob("*")) if pipeline_root.exists() else set()
    task = build_pipeline(exp)(experiment_json=exp.model_dump_json(), overrides=list(overrides or []))
    seconds = time.time() - started
    new_dirs = sorted(set(pipeline_root.glob("*")) - before)
    outputs = dict(getattr(task, "outputs", None) or {})
    stages = _stage_entries(exp, outputs, output_dir, new_dirs)
    status = "succeeded" if all(s["status"] == "succeeded" for s in stages.values()) else "failed"
    summary = {
        "status": status,
        "experiment": exp.name,
        "config_fingerprint": fingerprint,
        "seconds": round(seconds, 2),
        "output_dir": str(output_dir),
        "git_commit": commit,
        "mlflow": {"tracking_uri": tracking_uri, "experiment": mlflow_experiment,
                   "parent_run_id": parent_id},
        "stages": stages,
    }
    configure = output_dir / "stages" / "configure.json"
    if configure.exists():  # the overrides were refused: no stage ran
        summary["error"] = "configure: " + json.loads(configure.read_text())["error"]
    summary["promotion"] = _promotion(tracking_uri, stages.get("evaluate", {}))
    final_metrics = {k: v for s in stages.values() for k, v in s.get("metrics", {}).items()
                     if k.startswith("accuracy/")}
    tracking.finish_parent_run(tracking_uri, parent_id, status,
                               {**final_metrics, "pipeline_seconds": seconds},
                               {"r1vflow.status": status})
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
