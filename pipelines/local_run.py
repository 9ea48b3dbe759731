"""Run an experiment's DAG on this machine through the KFP SDK's local runner.

Every task is a subprocess of this Python (SubprocessRunner, no container; started warm, forked
from a process that has imported the stages' modules: r1vflow.pipelines.warm_tasks), or with
`runner="docker"` a container of the image its component names (r1vflow.pipelines.containers);
caching is on, and the pipeline root and cache live in the output dir, so running the same
experiment into the same directory again is served from cache. The driver opens the MLflow parent run, hands its id to the
tasks through the environment, and writes `<output-dir>/summary.json`.

Each task's whole log (what the KFP executor and the stage print) goes to
`<output-dir>/logs/<stage>.log`, the driver's own KFP lines to `logs/pipeline.log`; the console
gets one line as each stage starts and ends (a spinner when it is a terminal), or with
`verbose` the full stream as well.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from r1vflow.config import Experiment, flatten
from r1vflow.pipelines.dag import build_pipeline, pipeline_name
from r1vflow.pipelines.stage_logs import StageLogs
from r1vflow.runtime.reporting import RUN_DIR_ENV, publish_summary
from r1vflow.tracking import runs as tracking


@contextlib.contextmanager
def _quiet_mlflow(enabled: bool = True):
    """Only warnings and errors from MLflow's loggers while inside (imported first: importing
    mlflow sets its logger's level)."""
    import mlflow  # noqa: F401

    logger = logging.getLogger("mlflow")
    level = logger.level
    if enabled:
        logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _preparing(verbose: bool):
    """On a terminal, a spinner while the MLflow parent run is opened (seconds: the store is
    created or migrated) before the first task's own spinner."""
    import sys

    if verbose or not sys.stdout.isatty():
        return contextlib.nullcontext()
    from rich.console import Console

    return Console().status("opening the MLflow parent run ...")


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
            "cached", "error", "unlogged_metrics", "report_html") if result.get(k) is not None}
    return entries


def _promotion(tracking_uri: str, evaluation: dict[str, Any],
               promoted_now: bool) -> dict[str, Any] | None:
    """The candidate evaluate named, where the champion alias points after the gate, and the
    gate's verdict as its task logged it: `promoted` only when this run's `promote` task moved
    the alias to the candidate; `already_champion` when the candidate was the champion before
    (a rerun served from the cache); `decision` the reason the gate recorded on the version."""
    candidate = evaluation.get("model_version")
    if not candidate:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    from r1vflow.tracking.promotion import DECISION_TAG

    client = mlflow.MlflowClient(tracking_uri)
    name, version = candidate.rsplit("/", 1)
    try:
        champion = client.get_model_version_by_alias(name, "champion").version
    except MlflowException:
        champion = None
    champion = f"{name}/{champion}" if champion else None
    try:
        decision = client.get_model_version(name, version).tags.get(DECISION_TAG)
    except MlflowException:
        decision = None
    promoted = promoted_now and champion == candidate
    return {"candidate": candidate, "champion": champion, "promoted": promoted,
            "already_champion": not promoted and champion == candidate,
            "decision": decision}


def _runner_fields(stages: dict[str, dict[str, Any]], runner: str, images: dict[str, str],
                   failed: set[str], log_dir: Path) -> None:
    """Per stage: the runner and the image it ran in (None: no container); a task that failed
    before its stage reported (e.g. its container did not start) is `failed`, naming its log."""
    for stage, entry in stages.items():
        entry["runner"] = runner
        entry["image"] = images.get(stage) if runner == "docker" else None
        if stage in failed and entry["status"] == "not_run":
            entry["status"] = "failed"
            entry["error"] = "the task failed before the stage reported: see its log"
        if entry["status"] == "failed":
            entry["log"] = str(log_dir / f"{stage}.log")


def _task_images(pipeline: Any) -> dict[str, str]:
    """Task name -> image, read from the compiled pipeline (what DockerRunner will run)."""
    from google.protobuf import json_format

    from r1vflow.pipelines.containers import task_images

    return task_images(json_format.MessageToDict(pipeline.pipeline_spec))


@contextlib.contextmanager
def _kfp_runner(runner: str, output_dir: Path, images: dict[str, str], vllm: bool):
    """kfp.local's runner for `runner`, set up (and torn down) around the block; `vllm`: a
    stage may generate on vLLM (the warm task server imports it too)."""
    from kfp import local

    if runner == "subprocess":  # each task forked from a process that has imported the
        from r1vflow.pipelines.warm_tasks import warm_tasks  # stages' modules (warm_tasks.py)

        with warm_tasks(output_dir / "logs" / "warm-tasks.log", vllm=vllm):
            yield local.SubprocessRunner(use_venv=False)
        return
    if runner != "docker":
        raise ValueError(f"unknown runner {runner!r}; expected subprocess or docker")
    from r1vflow.pipelines.containers import docker_runner

    (output_dir / "pipeline_root").mkdir(exist_ok=True)  # the containers' user gets it too
    with docker_runner(output_dir, set(images.values()), os.environ) as kfp_runner:
        yield kfp_runner


class RunRefused(RuntimeError):
    """The run cannot start: its output dir is in use, or MLflow is unreachable (exit 2)."""


def run_local(exp: Experiment, output_dir: Path, experiment_file: str | None = None,
              quiet: bool = False, overrides: list[str] | None = None,
              applied: list[str] | None = None, verbose: bool = False,
              runner: str = "subprocess",
              announce: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run the DAG. `overrides` go to the pipeline's `overrides` parameter (applied and
    validated by its configure task, as in a KFP UI run); `applied` are the `--set` values
    already in `exp`, recorded on the parent run like the others. Task logs go to
    `<output-dir>/logs/`; the console gets a line per stage, or with `verbose` everything
    (`quiet` is the old name of the default and does nothing). `runner`: "subprocess", or
    "docker" for each task in its component's image (r1vflow.pipelines.containers).

    A checkpoint import_model would refuse (a hub id without a pinned revision) raises
    RunRefused before anything starts. The output dir is locked for the run (flock: a killed
    run leaves no lock behind); a second run into it raises RunRefused at once, and so does an unreachable MLflow server
    (after writing summary.json). summary.json is written atomically before the MLflow
    parent run is closed, whatever MLflow does then. `announce()` is called once the run
    passed those checks (the CLI prints its header line there)."""
    from r1vflow.config.pins import unpinned_checkpoints
    from r1vflow.storage.atomic import OutputDirBusy, output_lock

    unpinned = unpinned_checkpoints(exp)
    if unpinned:  # import_model would refuse it, after the tasks before it
        raise RunRefused(unpinned)
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        with output_lock(output_dir):
            return _run_locked(exp, output_dir, experiment_file, overrides, applied, verbose,
                               announce, runner)
    except OutputDirBusy as err:
        raise RunRefused(str(err)) from None


def _refuse(exp: Experiment, output_dir: Path, tracking_uri: str, error: str) -> RunRefused:
    """summary.json of a run that could not start, and the error to raise."""
    from r1vflow.storage.atomic import write_text

    summary = {"status": "failed", "experiment": exp.name, "error": error,
               "config_fingerprint": exp.fingerprint(), "seconds": 0.0,
               "output_dir": str(output_dir),
               "mlflow": {"tracking_uri": tracking_uri},
               "stages": {s: {"status": "not_run", "seconds": 0.0, "metrics": {}}
                          for s in exp.stages()}}
    write_text(output_dir / "summary.json", json.dumps(summary, indent=2))
    return RunRefused(error)


def _parent_tags(exp: Experiment, commit: str | None, experiment_file: str | None,
                 output_dir: Path, overrides: list[str]) -> dict[str, str]:
    """The MLflow parent run's tags: what ran, from which file and commit, with which changes."""
    return {
        "r1vflow.config_fingerprint": exp.fingerprint(),
        "r1vflow.pipeline": pipeline_name(exp),
        "r1vflow.git_commit": commit or "",
        "r1vflow.experiment_file": experiment_file or "",
        "r1vflow.output_dir": str(output_dir),
        "r1vflow.overrides": json.dumps(overrides),
    }


def _run_locked(exp: Experiment, output_dir: Path, experiment_file: str | None,
                overrides: list[str] | None, applied: list[str] | None,
                verbose: bool, announce: Callable[[], None] | None,
                runner: str) -> dict[str, Any]:
    from kfp import local

    started = time.time()
    (output_dir / "stages").mkdir(exist_ok=True)
    for stale in (output_dir / "stages").glob("*.json"):
        stale.unlink()
    tracking_uri = tracking.default_tracking_uri(output_dir, exp.tracking.tracking_uri)
    problem = tracking.unreachable(tracking_uri)
    if problem:
        raise _refuse(exp, output_dir, tracking_uri, problem)
    if announce is not None:
        announce()
    mlflow_experiment = tracking.experiment_name(exp.name, exp.tracking.experiment_name)
    commit = tracking.git_commit()
    fingerprint = exp.fingerprint()
    parent_tags = _parent_tags(exp, commit, experiment_file, output_dir,
                               [*(applied or []), *(overrides or [])])
    with _preparing(verbose), _quiet_mlflow(enabled=not verbose):  # "Creating initial ..."
        parent_id = tracking.start_parent_run(tracking_uri, mlflow_experiment, exp.name,
                                              parent_tags, flatten(exp.model_dump(mode="json")))
    os.environ.update({
        "MLFLOW_TRACKING_URI": tracking_uri,
        tracking.PARENT_ENV: parent_id,
        RUN_DIR_ENV: str(output_dir),
        "R1VFLOW_GIT_COMMIT": commit or "",
        "R1VFLOW_KFP_RUN": f"local:{parent_id}",
    })
    pipeline_root = output_dir / "pipeline_root"
    pipeline = build_pipeline(exp, local=True)
    images = _task_images(pipeline) if runner == "docker" else {}
    try:
        with _kfp_runner(runner, output_dir, images, exp.may_generate_on_vllm()) as kfp_runner:
            local.init(runner=kfp_runner, pipeline_root=str(pipeline_root),
                       cache_root=str(output_dir / "kfp_cache"), enable_caching=True,
                       raise_on_error=False)
            logs = StageLogs(output_dir / "logs", output_dir, verbose=verbose,
                             images=images).install()
            before = set(pipeline_root.glob("*")) if pipeline_root.exists() else set()
            try:
                task = pipeline(experiment_json=exp.model_dump_json(),
                                overrides=list(overrides or []))
            finally:  # kfp.local's entry points are ours only for this run
                logs.uninstall()
    except Exception:  # e.g. the container runner could not start: no task ran
        tracking.finish_parent_run(tracking_uri, parent_id, "failed", {},
                                   {"r1vflow.status": "failed"})
        raise
    seconds = time.time() - started
    new_dirs = sorted(set(pipeline_root.glob("*")) - before)
    outputs = dict(getattr(task, "outputs", None) or {})
    stages = _stage_entries(exp, outputs, output_dir, new_dirs)
    _runner_fields(stages, runner, images, logs.failed, output_dir / "logs")
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
    return _finish(summary, tracking_uri, parent_id, output_dir, "promote" in logs.ran,
                   _run_config(exp, overrides))


def _run_config(exp: Experiment, overrides: list[str] | None) -> dict[str, Any]:
    """The config the tasks ran with: `exp` and the pipeline's `overrides` (as configure
    applies them; unchanged when it refused them)."""
    from r1vflow.config import ConfigError
    from r1vflow.config.slicing import apply_overrides

    with contextlib.suppress(ConfigError):
        exp = apply_overrides(exp, list(overrides or []))
    return exp.model_dump(mode="json")


def _finish(summary: dict[str, Any], tracking_uri: str, parent_id: str,
            output_dir: Path, promoted_now: bool, config: dict[str, Any]) -> dict[str, Any]:
    """Promotion state, summary.json (atomically, first), then the MLflow parent run; an
    MLflow failure here is recorded in summary.json and loses nothing."""
    from r1vflow.storage.atomic import write_text

    stages, status = summary["stages"], summary["status"]
    try:
        summary["promotion"] = _promotion(tracking_uri, stages.get("evaluate", {}),
                                          promoted_now)
    except Exception as err:  # noqa: BLE001 (MLflow down at the end)
        summary["promotion"] = {"error": f"{type(err).__name__}: {err}"[:300]}
    try:
        facts = {"parent_run_id": parent_id, "fingerprint": summary["config_fingerprint"],
                 "status": status, "seconds": summary["seconds"],
                 "tracking_uri": tracking_uri, "promotion": summary["promotion"],
                 "config": config}
        summary["report"] = str(publish_summary(output_dir, summary["experiment"], stages,
                                                tracking_uri, parent_id, facts))
    except Exception as err:  # noqa: BLE001 (MLflow down: the pages are written before it)
        page = output_dir / "reports" / "summary.html"
        summary["report"] = str(page) if page.is_file() else None
        summary["mlflow"]["summary_page_error"] = f"{type(err).__name__}: {err}"[:300]
    write_text(output_dir / "summary.json", json.dumps(summary, indent=2))
    final_metrics = {k: v for s in stages.values() for k, v in s.get("metrics", {}).items()
                     if k.startswith("accuracy/")}
    try:
        tracking.finish_parent_run(tracking_uri, parent_id, status,
                                   {**final_metrics, "pipeline_seconds": summary["seconds"]},
                                   {"r1vflow.status": status})
    except Exception as err:  # noqa: BLE001
        summary["mlflow"]["error"] = (f"the parent run was not closed: "
                                      f"{type(err).__name__}: {err}")[:300]
        write_text(output_dir / "summary.json", json.dumps(summary, indent=2))
    return summary
