"""Registering a stage's saved model in MLflow, one job: a version whose files are stored and
verified before it counts as complete.

The version number is part of the model's metadata (lineage reads it downstream) and so of the
stored bytes: the version is created first, tagged `r1vflow.status=incomplete` (the promotion
gate refuses such a version); then the model is published (S3 retried within
storage.retry_budget_s) and the stored manifest read back; only then does the version get
`r1vflow.manifest_sha256` and `r1vflow.status=complete`. When publishing fails the version is
deleted again (left tagged incomplete if MLflow is down too) and the error propagates; the
stage's last checkpoint lets a rerun publish without retraining, and that rerun adopts a version
an earlier attempt completed (r1vflow.stages.adoption) instead of registering it twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from r1vflow.models.io import read_metadata, write_metadata
from r1vflow.stages.adoption import RESUME_TAG, STATUS_TAG, adopt_version
from r1vflow.stages.publishing import Publisher
from r1vflow.tracking.runs import StageTracker


@dataclass
class Registrar:
    """Registers models of one stage; `lineage` is its checkpointer's training lineage (None:
    the stage never checkpointed, so no earlier attempt can be adopted)."""

    stage: str
    tracker: StageTracker
    publisher: Publisher
    fingerprint: str  # the experiment's config fingerprint
    extra_tags: dict[str, str]
    lineage: str | None = None

    def register(self, model_dir: Path, parent: str | None, dataset_digest: str | None,
                 suffix: str = "") -> str | None:
        """Store a saved model, check what was stored, then complete its MLflow version
        ('name/version'; None when the tracker registers nothing)."""
        from r1vflow.storage import build_manifest, manifest_digest

        model_dir = Path(model_dir).resolve()
        meta = read_metadata(model_dir)
        prefix = self.publisher.object_prefix(model_dir, suffix)
        resume_key = f"{self.lineage}:{prefix}" if self.lineage is not None else ""
        adopted = (adopt_version(self.tracker, self.publisher.store, self.stage, suffix,
                                 resume_key) if resume_key else None)
        if adopted is not None:
            version, pointer = adopted
            self.publisher.published[model_dir] = pointer
            return version
        store = self.publisher.store
        storage_uri = store.uri_for(prefix) if store is not None else str(model_dir)
        tags = {**self._tags(parent, dataset_digest, resume_key),
                **adapter_tags(model_dir, storage_uri)}
        version = self.tracker.register_model(self.stage, storage_uri, tags, suffix)
        if "r1vflow.lora" in tags:  # the adapter (small) on the stage run too, before
            # publishing moves the directory into the store's cache
            self.tracker.log_artifacts(model_dir / "adapter",
                                       f"{prefix.rsplit('/', 1)[-1]}/adapter")
        meta.update({"model_version": version, "parent": parent})
        write_metadata(model_dir, meta)  # before hashing: the metadata is part of the artifact
        try:
            pointer = self.publisher.publish(model_dir, suffix)
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

    def _tags(self, parent: str | None, dataset_digest: str | None,
              resume_key: str) -> dict[str, str]:
        """The new version's tags: lineage, data, config, incomplete status, the resume key."""
        return {
            "r1vflow.parent": parent or "",
            "r1vflow.dataset_digest": dataset_digest or "",
            "r1vflow.config_fingerprint": self.fingerprint,
            STATUS_TAG: "incomplete",
            **({RESUME_TAG: resume_key} if resume_key else {}),
            **self.extra_tags,
        }


def adapter_tags(model_dir: Path, storage_uri: str) -> dict[str, str]:
    """A LoRA stage's model (r1vflow.models.lora): its adapter's settings and where it is
    stored, beside the merged weights the version registers; {} for full-weight training."""
    from r1vflow.models.lora import ADAPTER_DIR, adapter_settings

    settings = adapter_settings(model_dir)
    if settings is None:
        return {}
    return {"r1vflow.lora": json.dumps(settings, sort_keys=True),
            "r1vflow.adapter_uri": f"{storage_uri.rstrip('/')}/{ADAPTER_DIR}"}
