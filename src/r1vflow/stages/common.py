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

STATUS_TAG = "r1vflow.status"  # incomplete until the model's files are stored and verified
RESUME_TAG = "r1vflow.resume_key"  # <training lineage>:<object prefix> (see register)

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
        """This stage's resumable checkpoints (r1vflow.train.checkpoint), built on first use.

        Their place is derived from the stage, its config section (checkpoint settings aside),
        the data and model sections and its inputs' digests, so the same stage run again on the
        same inputs (a KFP retry, a new pod, the same command) finds them; with an object store
        they are uploaded under <storage.prefix>/<experiment>/checkpoints/<stage>/<key>."""
        if self._checkpointer is None:
            from r1vflow.train.checkpoint import (
                Checkpointer,
                CheckpointPolicy,
                checkpoint_key,
                local_root,
            )

            section = getattr(self.exp, self.stage, None)  # a stage without a section: defaults
            dumped = section.model_dump(mode="json") if section is not None else {}
            key = checkpoint_key(self.stage, dumped, self.inputs,
                                 {"data": self.exp.data.model_dump(mode="json"),
                                  "model": self.exp.model.model_dump(mode="json")})
            prefix = f"{self.exp.storage.prefix}/{self.exp.name}/checkpoints/{self.stage}/{key}"
            self._checkpointer = Checkpointer(
                self.stage, local_root(self.exp.name, self.stage, key),
                CheckpointPolicy.from_section(section), store=self.store, prefix=prefix)
        return self._checkpointer

    def input(self, name: str) -> Path:
        path = self.inputs.get(name)
        if path is None:
            raise ValueError(f"stage {self.stage} needs input {name!r}, which the DAG did not give")
        if not path.exists():
            raise FileNotFoundError(f"stage {self.stage}: input {name!r} not found at {path}")
        return path

    def register(self, model_dir: Path, parent: str | None, dataset_digest: str | None,
                 suffix: str = "") -> str | None:
        """Store a saved model, check what was stored, then complete its MLflow version.

        The version number is part of the model's metadata (lineage reads it downstream) and so
        of the stored bytes: the version is created first, tagged `r1vflow.status=incomplete`
        (the promotion gate refuses such a version); then the model is published (S3 retried
        within storage.retry_budget_s) and the stored manifest read back; only then does the
        version get `r1vflow.manifest_sha256` and `r1vflow.status=complete`. When publishing
        fails the version is deleted again (left tagged incomplete if MLflow is down too) and
        the error propagates; the stage's last checkpoint lets a rerun publish without
        retraining."""
        from r1vflow.storage import build_manifest, manifest_digest

        model_dir = Path(model_dir).resolve()
        meta = read_metadata(model_dir)
        prefix = self._object_prefix(model_dir, suffix)
        resume_key = (f"{self._checkpointer.lineage}:{prefix}"
                      if self._checkpointer is not None else "")
        adopted = self._adopt(model_dir, suffix, resume_key) if resume_key else None
        if adopted is not None:
            return adopted
        storage_uri = self.store.uri_for(prefix) if self.store is not None else str(model_dir)
        tags = {
            "r1vflow.parent": parent or "",
            "r1vflow.dataset_digest": dataset_digest or "",
            "r1vflow.config_fingerprint": self.exp.fingerprint(),
            STATUS_TAG: "incomplete",
            **({RESUME_TAG: resume_key} if resume_key else {}),
            **self.extra_tags,
        }
        version = self.tracker.register_model(self.stage, storage_uri, tags, suffix)
        meta.update({"model_version": version, "parent": parent})
        write_metadata(model_dir, meta)  # before hashing: the metadata is part of the artifact
        try:
            pointer = self.publish(model_dir, suffix)
        except BaseException:
            if version:
                self.tracker.delete_version(version)
            raise
        digest = pointer["manifest_sha256"] if pointer else manifest_digest(
            build_manifest(model_dir))
        if version:
            self.tracker.set_version_tag(version, "r1vflow.manifest_sha256", digest)
            self.tracker.set_version_tag(version, STATUS_TAG, "complete")
        return version

    def _adopt(self, model_dir: Path, suffix: str, resume_key: str) -> str | None:
        """The version an earlier attempt of this same training (a killed process resumed
        from its checkpoints) registered and stored completely for this output: verified in the
        store and reused, so a rerun registers no duplicate. None without a store or such a
        version."""
        if self.store is None:
            return None
        from r1vflow.storage import StoreError, manifest_digest

        found = self.tracker.find_version(self.stage, suffix,
                                          {RESUME_TAG: resume_key, STATUS_TAG: "complete"})
        if found is None:
            return None
        version, tags = found
        uri, digest = tags.get("r1vflow.storage_uri", ""), tags.get("r1vflow.manifest_sha256")
        try:
            manifest = self.store.read_manifest(uri)
        except (StoreError, ValueError):  # gone or unreadable: register it anew
            return None
        if manifest_digest(manifest) != digest:
            return None
        self.published[model_dir] = {"uri": uri, "manifest_sha256": digest,
                                     "total_size": manifest.total_size,
                                     "file_count": len(manifest.files)}
        print(f"{version}: registered and stored by an earlier attempt of this training "
              "(verified); not registered again", flush=True)
        return version

    def _object_prefix(self, model_dir: Path, suffix: str = "") -> str:
        from r1vflow.storage.pointers import object_prefix

        found = locate_output(model_dir, self.outputs)  # else: a model outside the outputs
        relpath = model_dir.name if found is None else (
            found[0] if found[1] == "." else f"{found[0]}/{found[1]}")
        return object_prefix(self.exp, self.stage, relpath + suffix)

    def publish(self, model_dir: Path, suffix: str = "") -> dict | None:
        """Upload a directory of this stage's outputs to the object store and check the stored
        manifest; its pointer (None without a store) replaces the bytes in the KFP artifact."""
        if self.store is None:
            return None
        from r1vflow.storage import StoreError, manifest_digest
        from r1vflow.storage.pointers import publish

        model_dir = Path(model_dir).resolve()
        pointer = publish(self.store, model_dir, self._object_prefix(model_dir, suffix))
        stored = manifest_digest(self.store.read_manifest(pointer["uri"]))
        if stored != pointer["manifest_sha256"]:
            raise StoreError(f"{pointer['uri']}: the stored manifest ({stored[:12]}...) is not "
                             f"the one just uploaded ({pointer['manifest_sha256'][:12]}...)")
        self.published[model_dir] = pointer
        return pointer


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


def monitor_flags(model_dir: str | Path) -> dict[str, str]:
    """Flags the training monitor raised while making this model and its ancestors
    (`extra.monitor_flags` of its metadata: flag -> first message); the promotion gate
    refuses a candidate that has any."""
    return dict(read_metadata(model_dir).get("extra", {}).get("monitor_flags", {}))
