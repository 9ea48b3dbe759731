"""The local fetch cache: `cache_dir/<manifest digest>/`, one directory per artifact version.

- An entry is filled under `.tmp-<digest16>-<pid>-<random>` and renamed into place; a
  `.r1vflow_fetched` marker records the URI and every file's size and mtime (ns) at that moment.
- A hit re-checks the entry: every file's size and mtime against the marker; a file that
  differs (or a file added or removed) is hashed against the entry's manifest. All sound: the
  marker takes the new stats and the entry is served; otherwise the entry is discarded and
  fetched again. A change that keeps a file's size and mtime is not seen without hashing (the
  price of not hashing a 70 GB checkpoint on every hit).
- A fill killed half-way leaves its `.tmp-*`; the next fetch in that cache removes every
  `.tmp-*` whose pid no longer runs on this machine (a cache directory is local to one host).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from r1vflow.storage.manifest import (
    MANIFEST_NAME,
    check_entry,
    hash_file,
    manifest_digest,
    parse_manifest,
)

FETCHED_MARKER = ".r1vflow_fetched"
_TMP = re.compile(r"^\.tmp-[0-9a-f]{1,16}-(\d+)-[0-9a-f]+$")


def cache_entry(cache_dir: Path, digest: str, uri: str, fill: Callable[[Path], object]) -> Path:
    """`cache_dir/<digest>`, re-checked when present (see the module doc), else filled once by
    `fill(tmp)` and renamed into place atomically; a concurrent filler that wins is fine."""
    target = cache_dir / digest
    clean_killed(cache_dir)
    if (target / FETCHED_MARKER).is_file():
        if still_sound(target):
            return target
        _discard(target)
    tmp = cache_dir / f".tmp-{digest[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fill(tmp)
        _write_marker(tmp, {"uri": uri})
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same entry first
            if not (target / FETCHED_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def file_stats(entry: Path) -> dict[str, list[int]]:
    """Relative path -> [size, mtime_ns] of every regular file of an entry but the marker."""
    stats = {}
    for path in entry.rglob("*"):
        info = path.lstat()
        if path.is_file() and not path.is_symlink() and path.name != FETCHED_MARKER:
            stats[path.relative_to(entry).as_posix()] = [info.st_size, info.st_mtime_ns]
    return stats


def still_sound(entry: Path) -> bool:
    """Whether a cached entry still holds what was fetched (unchanged stats, or re-hashed)."""
    try:
        marker = json.loads((entry / FETCHED_MARKER).read_text())
    except (OSError, ValueError):
        return False
    recorded, current = marker.get("files") or {}, file_stats(entry)
    if current == recorded:
        return True
    try:
        manifest = parse_manifest((entry / MANIFEST_NAME).read_bytes(), str(entry))
    except (OSError, ValueError):
        return False  # seeded without a manifest, or the manifest itself damaged
    if manifest_digest(manifest) != entry.name or set(current) != {*manifest.files,
                                                                   MANIFEST_NAME}:
        return False
    for rel, stat in current.items():
        if rel != MANIFEST_NAME and stat != recorded.get(rel) and check_entry(
                rel, manifest.files[rel], hash_file(entry / rel)):
            return False
    _write_marker(entry, {**marker, "files": current})
    return True


def clean_killed(cache_dir: Path) -> None:
    """Remove the `.tmp-*` fills whose process no longer runs (killed fetches)."""
    if not cache_dir.is_dir():
        return
    for tmp in cache_dir.glob(".tmp-*"):
        found = _TMP.match(tmp.name)
        if found is None or not _running(int(found.group(1))):
            shutil.rmtree(tmp, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _write_marker(entry: Path, marker: dict) -> None:
    marker = {**marker, "files": file_stats(entry)}
    tmp = entry / f"{FETCHED_MARKER}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(marker) + "\n")
    os.replace(tmp, entry / FETCHED_MARKER)


def _discard(entry: Path) -> None:
    aside = entry.parent / f".tmp-{entry.name[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(entry, aside)
    except OSError:  # another process discarded it first
        return
    shutil.rmtree(aside, ignore_errors=True)
