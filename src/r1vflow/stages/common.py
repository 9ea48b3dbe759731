"""The contract between a KFP component and the library: a stage takes a `StageContext`
(typed config, input paths, output paths, a tracker) and returns a `StageOutcome`.

Stage functions are plain Python: a test calls them on temporary directories without KFP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from r1vflow.config import Experiment
from r1vflow.tracking import StageTracker

MODEL_METADATA = "r1vflow_model.json"


class StageResult(BaseModel):
    """What a stage reports to the pipeline driver (and into summary.json)."""

    stage: str
    status: Literal["succeeded", "failed"]
    seconds: float
    metrics: dict[str, float] = Field(default_factory=dict)
    model_uri: str | None = None
    model_version: str | None = Field(None, description="Registered MLflow version, 'name/version'.")
    mlflow_run_id: str | None = None
    outputs: dict[str, str] = Field(default_factory=dict)
    task_dir: str | None = Field(None, description="The KFP task's directory (where it wrote).")
    error: str | None = None


@dataclass
class StageOutcome:
    metrics: dict[str, float]
    model_dir: Path | None = None
    model_version: str | None = None
    report: str = ""


@dataclass
class StageContext:
    exp: Experiment
    stage: str
    inputs: dict[str, Path]
    outputs: dict[str, Path]
    tracker: StageTracker
    extra_tags: dict[str, str] = field(default_factory=dict)

    def input(self, name: str) -> Path:
        path = self.inputs.get(name)
        if path is None:
            raise ValueError(f"stage {self.stage} needs input {name!r}, which the DAG did not give")
        if not path.exists():
            raise FileNotFoundError(f"stage {self.stage}: input {name!r} not found at {path}")
        return path

    def register(self, model_dir: Path, parent: str | None, dataset_digest: str | None,
                 suffix: str = "") -> str | None:
        """Register a saved model as an MLflow version and write the version into its metadata."""
        meta = read_metadata(model_dir)
        tags = {
            "r1vflow.parent": parent or "",
            "r1vflow.dataset_digest": dataset_digest or "",
            "r1vflow.config_fingerprint": self.exp.fingerprint(),
            **self.extra_tags,
        }
        version = self.tracker.register_model(self.stage, str(model_dir.resolve()), tags, suffix)
        meta.update({"model_version": version, "parent": parent})
        write_metadata(model_dir, meta)
        return version


def read_metadata(model_dir: Path) -> dict:
    path = Path(model_dir) / MODEL_METADATA
    if not path.exists():
        raise FileNotFoundError(f"{model_dir} is not an r1vflow model: {MODEL_METADATA} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is corrupted: {err}") from None


def write_metadata(model_dir: Path, meta: dict) -> None:
    path = Path(model_dir) / MODEL_METADATA
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(path)


def parent_version(model_dir: Path) -> str | None:
    """The registered version ('name/version') of an input model, for `r1vflow.parent`."""
    return read_metadata(model_dir).get("model_version")
