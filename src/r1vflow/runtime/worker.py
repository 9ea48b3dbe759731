"""What a launched stage's ranks receive and what rank 0 reports back (runtime.launch runs the
ranks, runtime.trainjob carries them to a TrainJob; both read these, neither imports the other)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from r1vflow.runtime.cluster import kfp_run_key

RESULT_FILE = "result.json"


class WorkerSpec(BaseModel):
    """What every rank of a launched stage receives (as JSON, on its command line or in a file)."""

    stage: str
    experiment_json: str
    inputs: dict[str, str] = Field(description="name -> local path, or store URI when staging.")
    outputs: dict[str, str] = Field(description="name -> local dir (ignored when staging).")
    result: str = Field("", description="Local file for rank 0's WorkerResult (ignored when staging).")
    staging: str | None = Field(
        None, description="Store prefix: inputs are URIs to fetch, and rank 0 uploads outputs to "
                          "<staging>/outputs/<name> and its result to <staging>/result.")
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    extra_tags: dict[str, str] = Field(default_factory=dict)
    entry: str | None = Field(
        None, description="'module:function' run instead of the stage's registered function "
                          "(a test entry point); it takes a StageContext, returns a StageOutcome.")


class WorkerResult(BaseModel):
    """What rank 0 reports back to the component."""

    stage: str
    world_size: int
    metrics: dict[str, float]
    report: str = ""
    model_output: str | None = Field(None, description="The output holding the model, if any.")
    model_relpath: str | None = Field(None, description="Model dir relative to that output.")
    model_version: str | None = None
    history: dict[str, list[tuple[int, float]]] = Field(
        default_factory=dict, description="Rank 0's per-step metrics, for the stage's report.")
    report_data: dict[str, Any] = Field(default_factory=dict)


def staging_prefix(exp_name: str, stage: str, environ: Mapping[str, str] | None = None) -> str:
    """Store prefix for one launch of a stage: staging/<experiment>/<kfp run>/<stage>-<random>."""
    run = kfp_run_key(os.environ if environ is None else environ) or "local"
    return f"staging/{exp_name}/{run}/{stage}-{uuid.uuid4().hex[:8]}"
