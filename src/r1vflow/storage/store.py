"""Object store for artifact directories: S3 (MinIO client) and plain files, one protocol.

An artifact is a directory stored under a prefix, file by file, plus `_r1vflow_manifest.json`
(sha256 and size per file) written LAST. Rules shared by both backends (see docs/storage.md):
- a prefix without a manifest is incomplete: download and verify raise `ArtifactIncomplete`;
- re-uploading first removes a stale manifest before changing any file, so a half-rewritten
  artifact is never visible as complete;
- a file already stored with the same sha256 (S3: user metadata `x-amz-meta-sha256`, read by a
  HEAD request) is not sent again;
- downloads hash while streaming; any mismatch raises `ArtifactCorrupted` naming the files;
- S3 transient failures (connection refused/reset, timeouts, 5xx) are retried with exponential
  backoff; rejected credentials fail at once with `StoreAuthError`, which never shows the secret.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Generic, Protocol, TypeVar
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field

from r1vflow.storage.cache import cache_entry
from r1vflow.storage.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    check_entry,
    hash_file,
    list_files,
    manifest_bytes,
    manifest_digest,
    parse_manifest,
    safe_join,
)

T = TypeVar("T")
L = TypeVar("L")  # how a backend addresses one artifact (a Path, a (bucket, prefix) pair)
OnFile = Callable[[str, int], None]
PROGRESS_MIN_BYTES = 64 * 1024 * 1024
LARGE_FILE_BYTES = 64 * 1024 * 1024  # files above this share the workers' streams between them
PART_SUFFIX = ".r1vflow-part"


class StoreError(RuntimeError):
    """Base class of object-store failures."""


class ArtifactIncomplete(StoreError):
    """The artifact has no manifest: its upload never finished (or the URI is wrong)."""


class ArtifactCorrupted(StoreError):
    """Stored bytes do not match the manifest; `problems` names each bad file."""

    def __init__(self, uri: str, problems: list[str]):
        self.uri = uri
        self.problems = problems
        super().__init__(
            f"{uri}: {len(problems)} file(s) failed verification: " + "; ".join(problems)
        )


class StoreAuthError(StoreError):
    """The server rejected the credentials (never retried; the message omits the secret)."""


class StoreUnavailable(StoreError):
    """A transient failure persisted through every retry."""


class StoreConfigError(StoreError):
    """Endpoint, bucket or credentials are missing or malformed."""


class ArtifactPointer(BaseModel):
    """What travels between pipeline stages instead of the bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(description="s3://bucket/prefix or file:///abs/path of the artifact.")
    manifest_sha256: str = Field(description="manifest_digest() of the stored manifest.")
    total_size: int = Field(ge=0, description="Sum of the file sizes in bytes.")
    file_count: int = Field(ge=0, description="Number of files in the manifest.")


class TransferStats(BaseModel):
    """What one upload actually moved."""

    files_sent: int = 0
    files_skipped: int = Field(0, description="Files deduplicated: same sha256 already stored.")
    bytes_sent: int = 0
    bytes_skipped: int = 0
    seconds: float = 0.0


class UploadResult(BaseModel):
    """The pointer to the stored artifact plus the transfer statistics of this upload."""

    pointer: ArtifactPointer
    stats: TransferStats


class ObjectStore(Protocol):
    """Directory-level artifact storage, implemented by FileStore and S3Store."""

    def uri_for(self, prefix: str) -> str: ...

    def upload_dir(
        self, local_dir: Path, prefix: str, on_file: OnFile | None = None
    ) -> UploadResult: ...

    def download_dir(
        self, uri: str, local_dir: Path, expected_sha256: str | None = None
    ) -> Path: ...

    def verify(self, uri: str, deep: bool = True) -> list[str]: ...

    def exists(self, uri: str) -> bool: ...

    def delete(self, uri: str) -> int: ...

    def fetch(self, pointer_or_uri: ArtifactPointer | str, cache_dir: Path) -> Path: ...


class ObjectMissing(Exception):
    """Internal: the object does not exist."""


class ProgressBar:
    """Thread-safe byte progress bar (rich); silent when disabled or the transfer is small."""

    def __init__(self, enabled: bool, description: str, total: int):
        self._progress = None
        if enabled and total >= PROGRESS_MIN_BYTES:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                transient=True,
            )
            self._task = self._progress.add_task(description, total=total)

    def __enter__(self) -> ProgressBar:
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress:
            self._progress.stop()

    def advance(self, n: int) -> None:
        if self._progress:
            self._progress.advance(self._task, n)


def run_parallel(fn: Callable[[str], T], items: list[str], workers: int) -> list[T]:
    """fn over items on a thread pool; the first failure cancels what has not started yet."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(fn, item) for item in items]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in done:
            if fut.exception() is not None:
                for other in pending:
                    other.cancel()
                raise fut.exception()  # type: ignore[misc]
    return [f.result() for f in futures]


class BaseStore(ABC, Generic[L]):
    """Upload/download/verify logic over a handful of per-object primitives."""

    def __init__(self, workers: int = 4, show_progress: bool = True):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.show_progress = show_progress

    # -- primitives implemented by backends; `loc` addresses one artifact ---------------------
    @abstractmethod
    def _loc_for_prefix(self, prefix: str) -> L: ...
    @abstractmethod
    def _loc_from_uri(self, uri: str) -> L: ...
    @abstractmethod
    def _uri(self, loc: L) -> str: ...
    @abstractmethod
    def _prepare(self, loc: L) -> None: ...
    @abstractmethod
    def _stored_entry(self, loc: L, rel: str) -> FileEntry | None:
        """Digest and size recorded for a stored object; None when it does not exist."""

    @abstractmethod
    def _put_file(
        self, loc: L, rel: str, path: Path, entry: FileEntry, bar: ProgressBar, streams: int
    ) -> None:
        """Store one file; `streams` = parallel connections it may use (multipart parts)."""

    @abstractmethod
    def _put_bytes(self, loc: L, rel: str, data: bytes) -> None: ...
    @abstractmethod
    def _get_bytes(self, loc: L, rel: str) -> bytes | None: ...
    @abstractmethod
    def _chunks(self, loc: L, rel: str) -> Iterator[bytes]:
        """The object's bytes in chunks; raises ObjectMissing when it does not exist."""

    @abstractmethod
    def _delete(self, loc: L, rel: str) -> None: ...
    @abstractmethod
    def _list(self, loc: L) -> list[str]:
        """Relative paths of every object stored under the artifact."""

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        return fn()

    # -- public API ------------------------------------------------------------------------
    def uri_for(self, prefix: str) -> str:
        """The URI an upload to `prefix` produces."""
        return self._uri(self._loc_for_prefix(prefix))

    def read_manifest(self, uri: str) -> Manifest:
        """The stored manifest of `uri`; ArtifactIncomplete when there is none."""
        loc = self._loc_from_uri(uri)
        manifest = self._read_manifest(loc)
        if manifest is None:
            raise ArtifactIncomplete(
                f"{uri}: no {MANIFEST_NAME}; the upload never completed or the URI is wrong"
            )
        return manifest

    def _read_manifest(self, loc: L) -> Manifest | None:
        data = self._retry(f"read {MANIFEST_NAME}", lambda: self._get_bytes(loc, MANIFEST_NAME))
        return None if data is None else parse_manifest(data, f"{self._uri(loc)}/{MANIFEST_NAME}")

    def exists(self, uri: str) -> bool:
        """True when the artifact at `uri` is complete (its manifest is stored)."""
        return self._read_manifest(self._loc_from_uri(uri)) is not None

    def upload_dir(
        self, local_dir: Path, prefix: str, on_file: OnFile | None = None
    ) -> UploadResult:
        """Store every file under `local_dir` at `prefix`, then the manifest.

        `on_file(relpath, bytes_sent)` is called (from worker threads) after each file is stored
        or found already stored (bytes_sent == 0).
        """
        start = time.perf_counter()
        local_dir = Path(local_dir)
        rels = list_files(local_dir)
        if not rels:
            raise ValueError(f"{local_dir} holds no files; refusing to store an empty artifact")
        loc = self._loc_for_prefix(prefix)
        self._prepare(loc)
        previous = self._read_manifest(loc)
        stats, lock = TransferStats(), threading.Lock()
        invalid = [previous is None]

        def invalidate() -> None:  # before changing any file of a complete artifact
            with lock:
                if not invalid[0]:
                    self._retry("remove stale manifest", lambda: self._delete(loc, MANIFEST_NAME))
                    invalid[0] = True

        sizes = [(local_dir / r).stat().st_size for r in rels]
        total = sum(sizes)
        # About `workers` connections in all: one per file when many large files go in parallel,
        # several parts of the same file when there are few.
        n_large = min(self.workers, sum(s > LARGE_FILE_BYTES for s in sizes)) or 1
        streams = max(1, self.workers // n_large)
        with ProgressBar(self.show_progress, f"upload {self._uri(loc)}", total) as bar:

            def one(rel: str) -> tuple[str, FileEntry]:
                path = local_dir / rel
                entry = hash_file(path)
                stored = self._retry(f"stat {rel}", lambda: self._stored_entry(loc, rel))
                uploaded = stored != entry
                if uploaded:
                    invalidate()
                    self._retry(
                        f"upload {rel}", lambda: self._put_file(loc, rel, path, entry, bar, streams)
                    )
                else:
                    bar.advance(entry.size)
                sent = entry.size if uploaded else 0
                with lock:
                    stats.files_sent += uploaded
                    stats.files_skipped += not uploaded
                    stats.bytes_sent += sent
                    stats.bytes_skipped += entry.size - sent
                if on_file:
                    on_file(rel, sent)
                return rel, entry

            entries = dict(run_parallel(one, rels, self.workers))
        manifest = Manifest.from_files(entries)
        if invalid[0] or previous is None or previous.files != manifest.files:
            invalidate()
            # Only files of the previous version are dropped: other objects under the prefix
            # may belong to a nested artifact (prefix/sub), which must not be touched.
            stale = sorted(set(previous.files) - set(entries)) if previous else []
            for rel in stale:
                self._retry(f"delete {rel}", lambda rel=rel: self._delete(loc, rel))
            data = manifest_bytes(manifest)
            self._retry("write manifest", lambda: self._put_bytes(loc, MANIFEST_NAME, data))
        else:
            manifest = previous
        stats.seconds = time.perf_counter() - start
        pointer = ArtifactPointer(
            uri=self._uri(loc),
            manifest_sha256=manifest_digest(manifest),
            total_size=manifest.total_size,
            file_count=len(manifest.files),
        )
        return UploadResult(pointer=pointer, stats=stats)

    def _hash_stored(
        self, loc: L, rel: str, sink: Path | None, bar: ProgressBar
    ) -> FileEntry | None:
        """Stream one stored object through sha256 (into `sink` when given); None if missing.

        With a sink, the chunks are hashed and written on a second thread while this one
        receives the next ones (`_HashWriter`): the connection never waits for the hash."""

        def attempt() -> FileEntry | None:
            size = 0
            try:
                with _HashWriter(sink) as out:
                    for chunk in self._chunks(loc, rel):
                        out.put(chunk)
                        size += len(chunk)
                        bar.advance(len(chunk))
            except ObjectMissing:
                return None
            return FileEntry(sha256=out.hexdigest(), size=size)

        return self._retry(f"read {rel}", attempt)

    def download_dir(self, uri: str, local_dir: Path, expected_sha256: str | None = None) -> Path:
        """Download and verify the artifact at `uri` into `local_dir` (manifest included).

        Files are written under temporary names and renamed only once their digest matches.
        A manifest key that is absolute, has a `..` part or would land outside `local_dir`
        raises ValueError before anything is written.
        `expected_sha256` pins the manifest digest (as recorded in a pointer).
        """
        loc = self._loc_from_uri(uri)
        manifest = self.read_manifest(uri)
        digest = manifest_digest(manifest)
        if expected_sha256 and digest != expected_sha256:
            raise ArtifactCorrupted(
                uri,
                [f"{MANIFEST_NAME}: digest {digest[:12]}... != expected {expected_sha256[:12]}..."],
            )
        local_dir = Path(local_dir)
        # Every key is checked before the first write (the manifest parser refuses unsafe keys
        # already; this guards the join itself, symlinked sub-directories included).
        targets = {rel: safe_join(local_dir, rel) for rel in manifest.files}
        local_dir.mkdir(parents=True, exist_ok=True)

        with ProgressBar(self.show_progress, f"download {uri}", manifest.total_size) as bar:

            def one(rel: str) -> str | None:
                target = targets[rel]
                target.parent.mkdir(parents=True, exist_ok=True)
                # A name no manifest key can take (a key `x.r1vflow-part` beside `x` shared the
                # old `x` + PART_SUFFIX and corrupted `x`): hidden, random, per download.
                tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}{PART_SUFFIX}")
                try:
                    found = self._hash_stored(loc, rel, tmp, bar)
                except BaseException:  # an outage past the retries: leave no temporary
                    tmp.unlink(missing_ok=True)
                    raise
                problem = check_entry(rel, manifest.files[rel], found)
                if problem:
                    tmp.unlink(missing_ok=True)
                    return problem
                os.replace(tmp, target)
                return None

            problems = [p for p in run_parallel(one, list(manifest.files), self.workers) if p]
        if problems:
            raise ArtifactCorrupted(uri, problems)
        (local_dir / MANIFEST_NAME).write_bytes(manifest_bytes(manifest))
        return local_dir

    def verify(self, uri: str, deep: bool = True) -> list[str]:
        """Problems of the stored artifact against its manifest ([] when sound).

        deep=True streams and hashes every object; deep=False trusts stored digests and sizes.
        Raises ArtifactIncomplete when the manifest is missing.
        """
        loc = self._loc_from_uri(uri)
        manifest = self.read_manifest(uri)
        with ProgressBar(self.show_progress and deep, f"verify {uri}", manifest.total_size) as bar:

            def one(rel: str) -> str | None:
                if deep:
                    found = self._hash_stored(loc, rel, None, bar)
                else:
                    found = self._retry(f"stat {rel}", lambda: self._stored_entry(loc, rel))
                return check_entry(rel, manifest.files[rel], found)

            return [p for p in run_parallel(one, list(manifest.files), self.workers) if p]

    def delete(self, uri: str) -> int:
        """Remove every object under the artifact's prefix, the manifest first (so it turns
        incomplete before files vanish). Returns the number of objects removed."""
        loc = self._loc_from_uri(uri)
        rels = self._retry("list", lambda: self._list(loc))
        order = [r for r in rels if r == MANIFEST_NAME] + [r for r in rels if r != MANIFEST_NAME]
        for rel in order:
            self._retry(f"delete {rel}", lambda rel=rel: self._delete(loc, rel))
        return len(order)

    def fetch(self, pointer_or_uri: ArtifactPointer | str, cache_dir: Path) -> Path:
        """Local copy of an artifact, cached under `cache_dir/<manifest_sha256>`.

        With a pointer, a cache hit does no network I/O at all; with a bare URI only the manifest
        is read to learn the digest. A hit whose files changed since the download is checked
        again (r1vflow.storage.cache).
        """
        if isinstance(pointer_or_uri, ArtifactPointer):
            uri, digest = pointer_or_uri.uri, pointer_or_uri.manifest_sha256
        else:
            uri, digest = pointer_or_uri, manifest_digest(self.read_manifest(pointer_or_uri))
        return cache_entry(Path(cache_dir), digest, uri,
                            lambda tmp: self.download_dir(uri, tmp, expected_sha256=digest))


def seed_cache(local_dir: Path, pointer: ArtifactPointer, cache_dir: Path) -> Path:
    """Put a just-uploaded directory into the fetch cache, so that `fetch` of its pointer on this
    machine does no network I/O. The directory must hold exactly the uploaded bytes."""
    return cache_entry(Path(cache_dir), pointer.manifest_sha256, pointer.uri,
                        lambda tmp: shutil.copytree(local_dir, tmp))


class _HashWriter:
    """sha256 of the chunks `put` into it, written to `sink` when given. With a sink, hashing
    and writing run on a thread of their own, a few chunks behind the receiver (both release
    the GIL), so a download overlaps receiving with hashing and writing; without one (verify)
    the chunk is hashed inline."""

    DEPTH = 8  # chunks in flight between receiver and hasher (8 MiB of 1 MiB chunks)

    def __init__(self, sink: Path | None) -> None:
        self._digest, self._sink = hashlib.sha256(), sink
        self._queue: queue.Queue[bytes | None] = queue.Queue(self.DEPTH)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _HashWriter:
        if self._sink is not None:
            self._file = open(self._sink, "wb")  # noqa: SIM115 (closed in __exit__)
            self._thread = threading.Thread(target=self._drain, daemon=True)
            self._thread.start()
        return self

    def put(self, chunk: bytes) -> None:
        if self._thread is None:
            self._digest.update(chunk)
            return
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)

    def _drain(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._digest.update(chunk)
                    self._file.write(chunk)
                except BaseException as err:  # reported to the receiver by put / __exit__
                    self._error = err

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._file.close()
            if self._error is not None and exc_type is None:
                raise self._error

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def parse_uri(uri: str) -> tuple[str, str, str]:
    """(scheme, netloc, path) of an artifact URI; only s3:// and file:// are accepted."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("s3", "file"):
        raise ValueError(
            f"unsupported artifact URI {uri!r}: expected s3://bucket/prefix or file:///path"
        )
    return parsed.scheme, parsed.netloc, unquote(parsed.path)
