"""The contract between a KFP component and the library: a stage takes a `StageContext`
(typed config, input paths, output paths, a tracker) and returns a `StageOutcome`.

Stage functions are plain Python: a test calls them on temporary directories without KFP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from r1vflow.config import Experiment
from r1vflow.models.io import parent_version, read_metadata, write_metadata
from r1vflow.tracking.runs import StageTracker

__all__ = ["StageContext", "StageOutcome", "StageResult", "locate_output", "parent_version",
           "read_metadata", "write_metadata"]


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
    exp: Experiment
    stage: str
    inputs: dict[str, Path]
    outputs: dict[str, Path]
    tracker: StageTracker
    extra_tags: dict[str, str] = field(default_factory=dict)
    store: Any = None  # an r1vflow.storage object store, or None (bytes travel in KFP artifacts)
    published: dict[Path, dict] = field(default_factory=dict)  # model dir -> pointer

    def input(self, name: str) -> Path:
        path = self.inputs.get(name)
        if path is None:
            raise ValueError(f"stage {self.stage} needs input {name!r}, which the DAG did not give")
        if not path.exists():
            raise FileNotFoundError(f"stage {self.stage}: input {name!r} not found at {path}")
        return path

    def register(self, model_dir: Path, parent: str | None, dataset_digest: str | None,
                 suffix: str = "") -> str | None:
        """Register a saved model as an MLflow version, record the version in its metadata, and
        publish it to the object store when there is one (tags `r1vflow.storage_uri`,
        `r1vflow.manifest_sha256`)."""
        from r1vflow.storage import build_manifest, manifest_digest
        from r1vflow.storage.pointers import object_prefix, publish

        model_dir = Path(model_dir).resolve()
        meta = read_metadata(model_dir)
        found = locate_output(model_dir, self.outputs)  # else: a model outside the outputs
        relpath = model_dir.name if found is None else (
            found[0] if found[1] == "." else f"{found[0]}/{found[1]}")
        prefix = object_prefix(self.exp, self.stage, relpath + suffix)
        storage_uri = self.store.uri_for(prefix) if self.store is not None else str(model_dir)
        tags = {
            "r1vflow.parent": parent or "",
            "r1vflow.dataset_digest": dataset_digest or "",
            "r1vflow.config_fingerprint": self.exp.fingerprint(),
            **self.extra_tags,
        }
        version = self.tracker.register_model(self.stage, storage_uri, tags, suffix)
        meta.update({"model_version": version, "parent": parent})
        write_metadata(model_dir, meta)  # before hashing: the metadata is part of the artifact
        if self.store is not None:
            pointer = publish(self.store, model_dir, prefix)
            self.published[model_dir] = pointer
            digest = pointer["manifest_sha256"]
        else:
            digest = manifest_digest(build_manifest(model_dir))
        if version:
            self.tracker.set_version_tag(version, "r1vflow.manifest_sha256", digest)
        return version


def locate_output(model_dir: str | Path,
                  outputs: Mapping[str, str | Path]) -> tuple[str, str] | None:
    """(output name, path relative to it: '.' for the output itself) of the first of `outputs`
    that holds `model_dir`; None when none does. Paths are compared resolved."""
    model_dir = Path(model_dir).resolve()
    for name, root in outputs.items():
        root = Path(root).resolve()
        if model_dir.is_relative_to(root):
            return name, model_dir.relative_to(root).as_posix()
    return None
