"""Model hand-off between stages through the object store: pointers instead of bytes.

With `storage.backend: s3` a model-producing stage writes its checkpoint to a scratch directory,
`publish` uploads it (manifest last, unchanged files skipped) and the stage's KFP output artifact
holds only `r1vflow_pointer.json` (URI + manifest digest). A downstream stage's input that holds a
pointer is fetched into a local cache keyed by the manifest digest and verified, so a 70 GB
checkpoint never travels through KFP's own artifact upload, and a machine that already has it
does no network I/O. With `storage.backend: file` the bytes are the KFP artifact, as before.

Endpoint, bucket and TLS come from the experiment's storage section or the environment
(`R1VFLOW_S3_ENDPOINT`, `R1VFLOW_S3_BUCKET`, `R1VFLOW_S3_SECURE`, the latter two overriding the
config); credentials only from the environment or a
credentials file (Kubernetes Secrets on clusters), never from the compiled pipeline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from r1vflow.config import Experiment

POINTER_FILE = "r1vflow_pointer.json"
CACHE_ENV = "R1VFLOW_ARTIFACT_CACHE"


def cache_dir() -> Path:
    """Where fetched artifacts are kept, keyed by manifest digest."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    run_dir = os.environ.get("R1VFLOW_RUN_DIR")
    if run_dir:
        return Path(run_dir) / "artifact_cache"
    return Path.home() / ".cache" / "r1vflow" / "artifacts"


def experiment_store(exp: Experiment):
    """The object store the experiment publishes to, or None for `storage.backend: file`."""
    if exp.storage.backend != "s3":
        return None
    from r1vflow.storage import store_from_env
    from r1vflow.storage.store import StoreConfigError

    env = dict(os.environ)
    if exp.storage.endpoint:
        env["R1VFLOW_S3_ENDPOINT"] = exp.storage.endpoint
    env.setdefault("R1VFLOW_S3_BUCKET", exp.storage.bucket)
    env.setdefault("R1VFLOW_S3_SECURE", "true" if exp.storage.secure else "false")
    env.setdefault("R1VFLOW_S3_RETRY_BUDGET_S", str(exp.storage.retry_budget_s))
    store = store_from_env(env, show_progress=False)
    if store is None:
        raise StoreConfigError(
            "storage.backend is 's3' but no endpoint is set: give storage.endpoint or "
            "R1VFLOW_S3_ENDPOINT (r1vflow run --stack DIR sets it from a local stack)")
    return store


def object_prefix(exp: Experiment, stage: str, name: str) -> str:
    """Where a stage's output lives in the bucket: <prefix>/<experiment>/<fingerprint>/<stage>/<name>."""
    return f"{exp.storage.prefix}/{exp.name}/{exp.fingerprint()[:16]}/{stage}/{name}"


def publish(store, model_dir: Path, prefix: str) -> dict:
    """Upload a model directory; returns the pointer as a dict (uri, manifest_sha256, sizes).

    The uploaded directory is then moved into the local cache under its digest, so later
    stages on this machine find it without downloading."""
    from r1vflow.storage.store import seed_cache

    pointer = store.upload_dir(model_dir, prefix).pointer
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    seed_cache(model_dir, pointer, cache)
    return pointer.model_dump()


def write_pointer(artifact_dir: Path, pointer: dict) -> None:
    artifact_dir.mkdir(parents=True, exist_ok=True)
    from r1vflow.storage.atomic import write_text

    write_text(artifact_dir / POINTER_FILE, json.dumps(pointer, indent=2, sort_keys=True))


def read_pointer(artifact_dir: Path) -> dict | None:
    path = Path(artifact_dir) / POINTER_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is corrupted: {err}") from None


def resolve_input(path: Path) -> Path:
    """The local directory holding an input's bytes: the path itself, or a verified, cached
    copy of the stored artifact its pointer names."""
    pointer = read_pointer(path)
    if pointer is None:
        return path
    from r1vflow.storage import ArtifactPointer, fetch

    return fetch(ArtifactPointer(**pointer), cache_dir())
