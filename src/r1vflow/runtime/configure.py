"""The body of the `configure` task: overrides applied and validated, then one slice per task."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from r1vflow.config import STAGES, ConfigError, Experiment, flatten
from r1vflow.config.slicing import PROMOTION, apply_overrides, slice_json
from r1vflow.runtime.cluster import attach_parent_run
from r1vflow.runtime.reporting import RUN_DIR_ENV
from r1vflow.storage.settings import tracking_uri_from_env
from r1vflow.tracking.runs import PARENT_ENV, experiment_name, log_params_batched

OVERRIDES_TAG = "r1vflow.overrides"


def configure_slices(experiment_json: str, overrides: list[str] | None) -> tuple[str, ...]:
    """(slice of each stage in STAGES order, '' for a disabled one; then promotion's slice)."""
    exp = Experiment.model_validate_json(experiment_json)
    overrides = [str(o) for o in overrides or []]
    try:
        exp = apply_overrides(exp, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        _mirror_failure(str(err))
        raise SystemExit(2) from None
    if overrides:
        print(f"overrides: {' '.join(overrides)}")
    _record_on_parent(exp, overrides)
    enabled = set(exp.stages())
    slices = tuple(slice_json(exp, s) if s in enabled else "" for s in STAGES)
    return (*slices, slice_json(exp, PROMOTION))


def _mirror_failure(error: str) -> None:
    """Locally, leave the reason where the driver looks for it (<run dir>/stages/configure.json)."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    if run_dir:
        out = Path(run_dir) / "stages"
        out.mkdir(parents=True, exist_ok=True)
        (out / "configure.json").write_text(json.dumps(
            {"stage": "configure", "status": "failed", "error": error}, indent=2))


def _record_on_parent(exp: Experiment, overrides: list[str]) -> None:
    """Record the run's config on the pipeline's MLflow parent run (when this run has one): the
    whole experiment, flattened, as params (so that MLflow's comparison and `r1vflow compare` show
    how two cluster runs' configs differ, as they do for local runs), and the overrides as a tag.

    On a cluster this first task creates the KFP run's parent run; `r1vflow run` creates its own
    with the params and the overrides tag already, so neither is written twice (MLflow params are
    immutable). Under `r1vflow run` (the local driver names its run directory) it touches no
    MLflow at all: the driver has recorded both already, and a cached rerun skips the seconds
    that opening the store takes."""
    if os.environ.get(RUN_DIR_ENV):
        return
    uri = exp.tracking.tracking_uri or tracking_uri_from_env()
    if uri:  # no-op locally: the local driver has created the parent already
        attach_parent_run(uri, experiment_name(exp.name, exp.tracking.experiment_name), exp.name,
                          exp.fingerprint())
    parent = os.environ.get(PARENT_ENV)
    if not (uri and parent):
        return
    from r1vflow.tracking.client import mlflow_client

    client = mlflow_client(uri)
    run = client.get_run(parent)
    if not run.data.params:
        log_params_batched(client, parent, flatten(exp.model_dump(mode="json")))
    if overrides and OVERRIDES_TAG not in run.data.tags:
        client.set_tag(parent, OVERRIDES_TAG, json.dumps(overrides))
