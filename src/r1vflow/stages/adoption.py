"""Adopting what an earlier attempt of the same training registered, one job: a rerun resumed
from its checkpoints (a killed process, a KFP retry) finds the version that attempt registered
and stored completely for the same output, checks the stored files, and reuses it instead of
registering a duplicate.

The attempt is recognised by the version's `r1vflow.resume_key` tag: the checkpointer's training
lineage and the output's object prefix (r1vflow.stages.registration sets it).
"""

from __future__ import annotations

from typing import Any

from r1vflow.tracking.runs import StageTracker

STATUS_TAG = "r1vflow.status"  # incomplete until the model's files are stored and verified
RESUME_TAG = "r1vflow.resume_key"  # <training lineage>:<object prefix>


def adopt_version(tracker: StageTracker, store: Any, stage: str, suffix: str,
                  resume_key: str) -> tuple[str, dict] | None:
    """The version ('name/version') of `stage`'s model (`suffix`) that an earlier attempt with
    `resume_key` registered and stored completely, with the pointer to its stored files, when
    the store still holds exactly those files; None without a store, without such a version, or
    when its files are gone or differ (then it is registered anew)."""
    if store is None:
        return None
    from r1vflow.storage import StoreError, manifest_digest

    found = tracker.find_version(stage, suffix, {RESUME_TAG: resume_key, STATUS_TAG: "complete"})
    if found is None:
        return None
    version, tags = found
    uri, digest = tags.get("r1vflow.storage_uri", ""), tags.get("r1vflow.manifest_sha256")
    try:
        manifest = store.read_manifest(uri)
    except (StoreError, ValueError):  # gone or unreadable: register it anew
        return None
    if manifest_digest(manifest) != digest:
        return None
    pointer = {"uri": uri, "manifest_sha256": digest, "total_size": manifest.total_size,
               "file_count": len(manifest.files)}
    print(f"{version}: registered and stored by an earlier attempt of this training "
          "(verified); not registered again", flush=True)
    return version, pointer
