"""Plain-file backend of the object store: artifacts as directories under a root.

For runs without S3 and for shared filesystems. Same layout and rules as S3 (see store.py):
files are copied to a temporary name and renamed into place, the manifest last; dedup compares
the sha256 of the stored file.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from r1vflow.storage.manifest import CHUNK_BYTES, FileEntry, hash_file
from r1vflow.storage.store import PART_SUFFIX, BaseStore, ObjectMissing, ProgressBar, parse_uri


class FileStore(BaseStore[Path]):
    """Artifacts as plain directories under `root` (runs without S3; shared filesystems)."""

    def __init__(self, root: Path, workers: int = 4, show_progress: bool = True):
        super().__init__(workers=workers, show_progress=show_progress)
        self.root = Path(root).resolve()

    def _loc_for_prefix(self, prefix: str) -> Path:
        loc = (self.root / prefix.strip("/")).resolve()
        if loc == self.root or self.root not in loc.parents:
            raise ValueError(f"prefix {prefix!r} must name a sub-directory of {self.root}")
        return loc

    def _loc_from_uri(self, uri: str) -> Path:
        scheme, netloc, path = parse_uri(uri)
        if scheme != "file" or netloc not in ("", "localhost"):
            raise ValueError(f"FileStore reads file:///absolute/path URIs, got {uri!r}")
        return Path(path)

    def _uri(self, loc: Path) -> str:
        return loc.as_uri()

    def _prepare(self, loc: Path) -> None:
        loc.mkdir(parents=True, exist_ok=True)

    def _stored_entry(self, loc: Path, rel: str) -> FileEntry | None:
        path = loc / rel
        return hash_file(path) if path.is_file() else None

    def _put_file(
        self, loc: Path, rel: str, path: Path, entry: FileEntry, bar: ProgressBar, streams: int
    ) -> None:
        target = loc / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}{PART_SUFFIX}")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
        bar.advance(entry.size)

    def _put_bytes(self, loc: Path, rel: str, data: bytes) -> None:
        tmp = loc / f".{rel}.{uuid.uuid4().hex[:8]}{PART_SUFFIX}"
        tmp.write_bytes(data)
        os.replace(tmp, loc / rel)

    def _get_bytes(self, loc: Path, rel: str) -> bytes | None:
        path = loc / rel
        return path.read_bytes() if path.is_file() else None

    def _chunks(self, loc: Path, rel: str) -> Iterator[bytes]:
        path = loc / rel
        if not path.is_file():
            raise ObjectMissing(rel)
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                yield chunk

    def _delete(self, loc: Path, rel: str) -> None:
        (loc / rel).unlink(missing_ok=True)

    def _list(self, loc: Path) -> list[str]:
        if not loc.is_dir():
            return []
        return [p.relative_to(loc).as_posix() for p in loc.rglob("*") if p.is_file()]
