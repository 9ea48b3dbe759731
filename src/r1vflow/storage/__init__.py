"""Artifact storage: checksummed manifests, S3 / file object stores, and the local server stack.

Entry points (the CLI wires these):
    store_from_env(), store_from_settings(...)   -> an ObjectStore (S3Store or FileStore)
    store.upload_dir(dir, prefix).pointer         -> ArtifactPointer (uri + manifest digest)
    fetch(pointer, cache_dir)                     -> verified local copy, cached by digest
    verify_uri(uri)                               -> list of problems (empty when sound)
    stack_up / stack_status / stack_down (r1vflow.storage.stack)
"""

from r1vflow.storage.filestore import FileStore
from r1vflow.storage.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    build_manifest,
    manifest_digest,
    verify_dir,
)
from r1vflow.storage.s3 import S3Store
from r1vflow.storage.settings import (
    fetch,
    load_credentials,
    store_for_uri,
    store_from_env,
    store_from_settings,
    verify_uri,
)
from r1vflow.storage.store import (
    ArtifactCorrupted,
    ArtifactIncomplete,
    ArtifactPointer,
    ObjectStore,
    StoreAuthError,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
    TransferStats,
    UploadResult,
)

__all__ = [
    "MANIFEST_NAME",
    "ArtifactCorrupted",
    "ArtifactIncomplete",
    "ArtifactPointer",
    "FileEntry",
    "FileStore",
    "Manifest",
    "ObjectStore",
    "S3Store",
    "StoreAuthError",
    "StoreConfigError",
    "StoreError",
    "StoreUnavailable",
    "TransferStats",
    "UploadResult",
    "build_manifest",
    "fetch",
    "load_credentials",
    "manifest_digest",
    "store_for_uri",
    "store_from_env",
    "store_from_settings",
    "verify_dir",
    "verify_uri",
]
