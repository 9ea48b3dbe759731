"""Checksummed manifests of artifact directories.

A manifest lists every regular file under a directory (paths relative to it, POSIX separators) with
its sha256 and size. It is what makes a stored artifact verifiable and what the object store writes
LAST, so an artifact whose manifest is missing is by definition incomplete.

`manifest_digest` hashes only the file table (not `created_at`), so the same bytes always give the
same digest: it is the artifact's content identity, used in pointers and as the download-cache key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, field_validator

MANIFEST_NAME = "_r1vflow_manifest.json"
CHUNK_BYTES = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_path_reason(rel: str) -> str | None:
    """Why `rel` may not be a manifest key (None when it is a safe relative POSIX path).

    A key is joined to the download directory: an absolute path, a `..` part, a backslash or a
    drive letter would let a manifest write outside it, so all of them are refused, and so are
    empty, `.` and NUL-containing parts (never produced by `build_manifest`)."""
    if not rel:
        return "it is empty"
    if "\x00" in rel:
        return "it contains a NUL character"
    if "\\" in rel:
        return "it contains a backslash"
    if rel.startswith("/"):
        return "it is absolute"
    if _DRIVE.match(rel):
        return "it starts with a drive letter"
    parts = rel.split("/")
    if ".." in parts:
        return "it has a '..' part"
    if any(p in ("", ".") for p in parts):
        return "it has an empty or '.' part"
    return None


def check_relative_path(rel: str) -> str:
    """`rel` when it is a safe manifest key; ValueError naming the key and the reason otherwise."""
    reason = unsafe_path_reason(rel)
    if reason:
        raise ValueError(f"unsafe manifest path {rel!r}: {reason}; keys must be relative POSIX "
                         "paths inside the artifact")
    return rel


def safe_join(directory: Path, rel: str) -> Path:
    """`directory / rel`, refusing a key that is unsafe or resolves outside `directory`."""
    check_relative_path(rel)
    base = Path(directory).resolve()
    target = (base / PurePosixPath(rel)).resolve()
    if target == base or base not in target.parents:
        raise ValueError(f"unsafe manifest path {rel!r}: it resolves outside {base}")
    return target


class FileEntry(BaseModel):
    """One file of an artifact."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(description="Hex sha256 of the file's bytes.")
    size: int = Field(ge=0, description="Size in bytes.")


class Manifest(BaseModel):
    """The file table of an artifact directory."""

    model_config = ConfigDict(extra="forbid")

    files: dict[str, FileEntry] = Field(
        description="Relative POSIX path -> digest and size; the manifest file itself excluded."
    )
    created_at: str = Field(description="UTC ISO-8601 time the manifest was built.")
    total_size: int = Field(ge=0, description="Sum of the file sizes in bytes.")

    @field_validator("files")
    @classmethod
    def _safe_keys(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for rel in files:
            check_relative_path(rel)
        return files

    @classmethod
    def from_files(cls, files: dict[str, FileEntry]) -> Manifest:
        """Build a manifest (sorted, timestamped now) from a file table."""
        ordered = {k: files[k] for k in sorted(files)}
        return cls(
            files=ordered,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            total_size=sum(e.size for e in ordered.values()),
        )


def hash_file(path: Path, chunk_bytes: int = CHUNK_BYTES) -> FileEntry:
    """Stream `path` through sha256 in `chunk_bytes` chunks (never whole-file in memory)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(sha256=digest.hexdigest(), size=size)


def list_files(directory: Path) -> list[str]:
    """Sorted relative POSIX paths of the regular files under `directory`, minus the manifest.

    Symlinks are refused: an artifact must hold its bytes, not point at them.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"artifact directory {directory} does not exist")
    out: list[str] = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in files:
            path = Path(root) / name
            rel = path.relative_to(directory).as_posix()
            if rel == MANIFEST_NAME:
                continue
            if path.is_symlink():
                raise ValueError(f"{path} is a symlink; artifacts must contain regular files")
            out.append(rel)
    return sorted(out)


def build_manifest(directory: Path) -> Manifest:
    """Hash every file under `directory` (streamed, 1 MiB chunks) into a Manifest."""
    directory = Path(directory)
    return Manifest.from_files({rel: hash_file(directory / rel) for rel in list_files(directory)})


def manifest_digest(manifest: Manifest) -> str:
    """sha256 of the canonical JSON of the file table (sorted keys, no whitespace).

    `created_at` is left out on purpose: identical contents give identical digests.
    """
    table = {k: v.model_dump() for k, v in manifest.files.items()}
    canonical = json.dumps(table, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def manifest_bytes(manifest: Manifest) -> bytes:
    """The manifest as stored: indented JSON with sorted file paths."""
    return (manifest.model_dump_json(indent=1) + "\n").encode()


def parse_manifest(data: bytes, source: str) -> Manifest:
    """Parse stored manifest bytes; `source` names where they came from in the error."""
    try:
        return Manifest.model_validate_json(data)
    except ValueError as exc:
        raise ValueError(f"manifest {source} is not a valid r1vflow manifest: {exc}") from exc


def check_entry(rel: str, expected: FileEntry, actual: FileEntry | None) -> str | None:
    """One problem line for file `rel`, or None when `actual` matches `expected`."""
    if actual is None:
        return f"{rel}: missing"
    if actual.size != expected.size:
        return f"{rel}: size mismatch (expected {expected.size} bytes, found {actual.size})"
    if actual.sha256 != expected.sha256:
        return (
            f"{rel}: sha256 mismatch (expected {expected.sha256[:12]}..., "
            f"found {actual.sha256[:12]}...)"
        )
    return None


def verify_dir(directory: Path, manifest: Manifest) -> list[str]:
    """Problems of `directory` against `manifest`: missing files, size or digest mismatches.

    Files present on disk but absent from the manifest are not problems (a cache may hold extras).
    Sizes are compared before hashing so a truncated file costs no read.
    """
    directory = Path(directory)
    problems: list[str] = []
    for rel, expected in manifest.files.items():
        path = directory / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = path.stat().st_size
        actual = FileEntry(sha256="", size=size) if size != expected.size else hash_file(path)
        problem = check_entry(rel, expected, actual)
        if problem:
            problems.append(problem)
    return problems
