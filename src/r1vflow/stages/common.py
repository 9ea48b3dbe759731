"""The contract between a KFP component and the library: a stage takes a `StageContext`
(typed config, input paths, output paths, a tracker) and returns a `StageOutcome`.

Stage functions are plain Python: a test calls them on temporary directories without KFP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from r1vflow.config import Experiment
from r1vflow.models.io import parent_version, read_metadata, write_metadata
from r1vflow.stages.adoption import STATUS_TAG
from r1vflow.stages.publishing import Publisher, locate_output
from r1vflow.stages.registration import Registrar
from r1vflow.tracking.runs import StageTracker

__all__ = ["STATUS_TAG", "StageContext", "StageOutcome", "StageResult", "locate_output",
           "monitor_flags", "parent_version", "read_metadata", "write_metadata"]


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
    report_html: str | None = Field(None, description="The stage's HTML report (r1vflow.reports).")
    error: str | None = None
    unlogged_metrics: int | None = Field(
        None, description="Metric values MLflow never received (an outage outlasted the stage).")


@dataclass
class StageOutcome:
    metrics: dict[str, float]
    model_dir: Path | None = None
    model_version: str | None = None
    report: str = ""
    # What the stage's HTML report draws besides its metrics (r1vflow.reports): per-step
    # histories (key -> [(step, value)]; the component adds what its tracker recorded) and
    # stage-specific extras (JSON-able) that the stage's figure builder reads.
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    report_data: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """What a stage function receives. It composes the parts that do the jobs around a stage:
    where its checkpoints live (`checkpointer()`, r1vflow.stages.checkpoints), publishing output
    directories to the object store (`publish()`, r1vflow.stages.publishing) and registering
    models in MLflow (`register()`, r1vflow.stages.registration, which adopts a version an earlier
    attempt completed, r1vflow.stages.adoption)."""

    exp: Experiment
    stage: str
    inputs: dict[str, Path]
    outputs: dict[str, Path]
    tracker: StageTracker
    extra_tags: dict[str, str] = field(default_factory=dict)
    store: Any = None  # an r1vflow.storage object store, or None (bytes travel in KFP artifacts)
    published: dict[Path, dict] = field(default_factory=dict)  # model dir -> pointer
    _checkpointer: Any = field(default=None, repr=False)

    def checkpointer(self):
        """This stage's resumable checkpoints (r1vflow.train.checkpoint), built on first use at
        the place r1vflow.stages.checkpoints derives from the stage, its config and its inputs."""
        if self._checkpointer is None:
            from r1vflow.stages.checkpoints import stage_checkpointer

            self._checkpointer = stage_checkpointer(self.exp, self.stage, self.inputs, self.store)
        return self._checkpointer

    def input(self, name: str) -> Path:
        path = self.inputs.get(name)
        if path is None:
            raise ValueError(f"stage {self.stage} needs input {name!r}, which the DAG did not give")
        if not path.exists():
            raise FileNotFoundError(f"stage {self.stage}: input {name!r} not found at {path}")
        return path

    def publisher(self) -> Publisher:
        """Publishes this stage's output directories into `published` (the runtime writes a
        pointer into the KFP artifact for each)."""
        return Publisher(self.exp, self.stage, self.outputs, self.store, self.published)

    def register(self, model_dir: Path, parent: str | None, dataset_digest: str | None,
                 suffix: str = "") -> str | None:
        """Store a saved model, check what was stored, then complete its MLflow version
        (r1vflow.stages.registration); a version an earlier attempt of this same training
        (the checkpointer's lineage) completed for this output is adopted instead."""
        lineage = self._checkpointer.lineage if self._checkpointer is not None else None
        registrar = Registrar(self.stage, self.tracker, self.publisher(), self.exp.fingerprint(),
                              self.extra_tags, lineage)
        return registrar.register(model_dir, parent, dataset_digest, suffix)

    def publish(self, model_dir: Path, suffix: str = "") -> dict | None:
        """Upload a directory of this stage's outputs to the object store and check the stored
        manifest; its pointer (None without a store) replaces the bytes in the KFP artifact."""
        return self.publisher().publish(model_dir, suffix)


def monitor_flags(model_dir: str | Path) -> dict[str, str]:
    """Flags the training monitor raised while making this model and its ancestors
    (`extra.monitor_flags` of its metadata: flag -> first message); the promotion gate
    refuses a candidate that has any."""
    return dict(read_metadata(model_dir).get("extra", {}).get("monitor_flags", {}))
