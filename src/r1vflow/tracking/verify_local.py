"""`r1vflow artifacts verify` for the model URI a local run reports: a directory.

With `storage.backend: file` (the smoke and tiny presets) a model stays in the run's pipeline
root with no manifest file beside it; what it was when it was registered is the manifest digest
its MLflow model version carries (`r1vflow.manifest_sha256`, stages.common.register). So the
directory is hashed again and compared with that tag, the version read from the directory's
`r1vflow_model.json`, the MLflow store found as other reading commands find it (the run dir
above the model, r1vflow.tracking.locate). A directory that does hold a manifest is checked
against it, file by file, like an s3:// one.
"""

from __future__ import annotations

from pathlib import Path

MANIFEST_TAG = "r1vflow.manifest_sha256"


def run_dir_of(path: Path) -> Path | None:
    """The run output dir (it holds summary.json) a model directory lies in, if any."""
    for parent in path.resolve().parents:
        if (parent / "summary.json").is_file():
            return parent
    return None


def verify_model_dir(path: Path, tracking_uri: str) -> tuple[list[str], str]:
    """(problems, what was checked) of a local model directory against its registered
    version's manifest digest in the store at `tracking_uri`. ValueError when it is no
    r1vflow model directory or names no registered version."""
    from mlflow.exceptions import MlflowException

    from r1vflow.models.io import read_metadata
    from r1vflow.storage.manifest import build_manifest, manifest_digest
    from r1vflow.tracking.client import mlflow_client

    if not (path / "r1vflow_model.json").is_file():
        raise ValueError(f"{path}: no r1vflow_model.json, so no r1vflow model directory")
    version = read_metadata(path).get("model_version")
    if not version:
        raise ValueError(f"{path}: its r1vflow_model.json names no registered model version")
    name, number = version.rsplit("/", 1)
    try:
        expected = mlflow_client(tracking_uri).get_model_version(name, number).tags.get(
            MANIFEST_TAG)
    except MlflowException as err:
        raise ValueError(f"{version} (named by {path}/r1vflow_model.json): {err.message}") \
            from None
    if not expected:
        raise ValueError(f"{version} carries no {MANIFEST_TAG} tag: nothing to compare with")
    actual = manifest_digest(build_manifest(path))
    checked = f"its files hash to the manifest digest {version} registered ({expected[:12]})"
    if actual != expected:
        return [f"{path}: its files differ from what {version} registered (manifest sha256 "
                f"{expected[:12]}..., now {actual[:12]}...)"], checked
    return [], checked
