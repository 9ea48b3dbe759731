"""S3 backend of the object store, on the `minio` client (MinIO on clusters, any S3 server locally).

Objects of an artifact live at `s3://BUCKET/PREFIX/<relpath>`; each carries its sha256 as user
metadata (`x-amz-meta-sha256`), which is what deduplication compares through a HEAD request.
Files go up in parallel (`workers` files at a time); files larger than `part_size` go multipart,
with parts of one file in flight in parallel when few large files share the workers
(`part_parallel` fixes that number instead). Defaults were tuned with `r1vflow bench artifacts`
on a 2-core machine, where more connections than cores only add contention. Every request is
retried on transient failures with exponential backoff (`max_attempts` attempts, `backoff_s`
doubling each time, capped at `max_backoff_s`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from r1vflow.config.platform import uri_userinfo
from r1vflow.storage.manifest import CHUNK_BYTES, FileEntry
from r1vflow.storage.store import (
    BaseStore,
    ObjectMissing,
    ProgressBar,
    StoreAuthError,
    StoreConfigError,
    StoreUnavailable,
    parse_uri,
)

T = TypeVar("T")
DEFAULT_PART_SIZE = 32 * 1024 * 1024
DEFAULT_WORKERS = 4
SHA_META = "sha256"
AUTH_CODES = frozenset(
    {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "InvalidToken", "ExpiredToken"}
)
TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed"}
)
MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})


def classify_error(exc: BaseException) -> str:
    """'auth', 'transient' or 'fatal' for an exception raised by the minio client / urllib3."""
    if isinstance(exc, S3Error):
        if exc.code in AUTH_CODES:
            return "auth"
        status = getattr(exc.response, "status", 0) or 0
        return "transient" if exc.code in TRANSIENT_CODES or status >= 500 else "fatal"
    if isinstance(exc, ServerError):
        return "transient" if exc.status_code >= 500 else "fatal"
    if isinstance(exc, InvalidResponseError):
        return "transient" if "Response code: 5" in str(exc) else "fatal"
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return "transient"
    return "fatal"


def mask(secret: str) -> str:
    """First 4 characters and the length: enough to tell keys apart, never enough to use one."""
    return f"{secret[:4]}...({len(secret)} chars)"


def split_endpoint(endpoint: str) -> tuple[str, bool]:
    """('host:port', secure) from 'http://host:port', 'https://host' or 'host:port'."""
    endpoint = endpoint.strip().rstrip("/")
    if uri_userinfo(endpoint):
        raise StoreConfigError(
            "S3 endpoint must not contain credentials (user:password@); give them as "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the cluster.s3_secret Secret)")
    if endpoint.startswith("https://"):
        return endpoint[len("https://") :], True
    if endpoint.startswith("http://"):
        return endpoint[len("http://") :], False
    if "://" in endpoint or "/" in endpoint:
        raise StoreConfigError(f"S3 endpoint {endpoint!r} must look like http://host:port")
    return endpoint, False


class _MinioProgress:
    """Adapter from minio's progress protocol to our bar."""

    def __init__(self, bar: ProgressBar):
        self._bar = bar

    def set_meta(self, object_name: str, total_length: int) -> None:
        pass

    def update(self, size: int) -> None:
        self._bar.advance(size)


class S3Store(BaseStore[tuple[str, str]]):
    """Artifacts in an S3 bucket under `base_prefix`."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        secure: bool = False,
        region: str | None = None,
        *,
        base_prefix: str = "",
        workers: int = DEFAULT_WORKERS,
        part_size: int = DEFAULT_PART_SIZE,
        part_parallel: int | None = None,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        retry_budget_s: float | None = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 300.0,
        show_progress: bool = True,
    ):
        super().__init__(workers=workers, show_progress=show_progress)
        host, scheme_secure = split_endpoint(endpoint)
        if not access_key or not secret_key:
            raise StoreConfigError(f"S3 credentials for {host} are empty")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.endpoint = host
        self.secure = secure or scheme_secure
        self.bucket = bucket
        self.base_prefix = base_prefix.strip("/")
        self.part_size = part_size
        self.part_parallel = part_parallel
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.retry_budget_s = retry_budget_s
        self._access_key_hint = mask(access_key)
        self._buckets_ready: set[str] = set()
        # One connection per in-flight part; urllib3 retries only a failed connect, once: the
        # retry/backoff policy lives in _retry so that it is visible and configurable.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            maxsize=workers * max(workers, part_parallel or 1) + 4,
            retries=urllib3.Retry(total=1, connect=1, read=0, status=0, redirect=0),
        )
        self.client = Minio(
            host,
            access_key=access_key,
            secret_key=secret_key,
            secure=self.secure,
            region=region,
            http_client=http,
        )

    def __repr__(self) -> str:
        return (
            f"S3Store(endpoint={self.endpoint!r}, bucket={self.bucket!r}, "
            f"access_key={self._access_key_hint})"
        )

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """fn() with exponential backoff on transient errors; auth errors fail at once.

        With `retry_budget_s` a transient failure is retried until that many seconds have
        passed since the first attempt (long enough for an S3 server to restart), else
        `max_attempts` times."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as exc:  # classified below; anything not transient is re-raised
                kind = classify_error(exc)
                if kind == "auth":
                    raise StoreAuthError(
                        f"S3 server {self.endpoint} rejected the credentials "
                        f"(access key {self._access_key_hint}) during {what}: "
                        f"{getattr(exc, 'code', type(exc).__name__)}. Check the credentials file "
                        "or R1VFLOW_S3_ACCESS_KEY / R1VFLOW_S3_SECRET_KEY."
                    ) from None
                if kind == "fatal":
                    raise
                pause = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                spent = time.monotonic() - started
                if (attempt >= self.max_attempts if self.retry_budget_s is None
                        else spent + pause > self.retry_budget_s):
                    raise StoreUnavailable(
                        f"S3 server {self.endpoint}: {what} still failing after {attempt} "
                        f"attempts in {spent:.0f} s: {type(exc).__name__}: {exc}"
                    ) from exc
                time.sleep(pause)

    # -- primitives ------------------------------------------------------------------------
    def _loc_for_prefix(self, prefix: str) -> tuple[str, str]:
        key = "/".join(p for p in (self.base_prefix, prefix.strip("/")) if p)
        if not key:
            raise ValueError("an artifact prefix must not be empty")
        return self.bucket, key

    def _loc_from_uri(self, uri: str) -> tuple[str, str]:
        scheme, bucket, path = parse_uri(uri)
        if scheme != "s3" or not bucket or not path.strip("/"):
            raise ValueError(f"S3Store reads s3://bucket/prefix URIs, got {uri!r}")
        return bucket, path.strip("/")

    def _uri(self, loc: tuple[str, str]) -> str:
        return f"s3://{loc[0]}/{loc[1]}"

    def ensure_bucket(self, bucket: str | None = None) -> None:
        """Create the bucket when it does not exist yet."""
        bucket = bucket or self.bucket
        if bucket in self._buckets_ready:
            return

        def make() -> None:
            if not self.client.bucket_exists(bucket):
                try:
                    self.client.make_bucket(bucket)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

        self._retry(f"create bucket {bucket}", make)
        self._buckets_ready.add(bucket)

    def _prepare(self, loc: tuple[str, str]) -> None:
        self.ensure_bucket(loc[0])

    def _stored_entry(self, loc: tuple[str, str], rel: str) -> FileEntry | None:
        try:
            st = self.client.stat_object(loc[0], f"{loc[1]}/{rel}")
        except S3Error as exc:
            if exc.code in MISSING_CODES or exc.code == "NoSuchBucket":
                return None
            raise
        sha = (st.metadata or {}).get(f"x-amz-meta-{SHA_META}", "")
        return FileEntry(sha256=sha, size=st.size or 0)

    def _put_file(
        self,
        loc: tuple[str, str],
        rel: str,
        path: Path,
        entry: FileEntry,
        bar: ProgressBar,
        streams: int,
    ) -> None:
        self.client.fput_object(
            loc[0],
            f"{loc[1]}/{rel}",
            str(path),
            metadata={SHA_META: entry.sha256},
            part_size=self.part_size if entry.size > self.part_size else 0,
            num_parallel_uploads=self.part_parallel or streams,
            progress=_MinioProgress(bar),
        )

    def _put_bytes(self, loc: tuple[str, str], rel: str, data: bytes) -> None:
        import hashlib
        import io

        meta = {SHA_META: hashlib.sha256(data).hexdigest()}
        self.client.put_object(
            loc[0],
            f"{loc[1]}/{rel}",
            io.BytesIO(data),
            len(data),
            content_type="application/json",
            metadata=meta,
        )

    def _get_bytes(self, loc: tuple[str, str], rel: str) -> bytes | None:
        try:
            return b"".join(self._chunks(loc, rel))
        except ObjectMissing:
            return None

    def _chunks(self, loc: tuple[str, str], rel: str) -> Iterator[bytes]:
        try:
            response = self.client.get_object(loc[0], f"{loc[1]}/{rel}")
        except S3Error as exc:
            if exc.code in MISSING_CODES or exc.code == "NoSuchBucket":
                raise ObjectMissing(rel) from exc
            raise
        try:
            yield from response.stream(CHUNK_BYTES)
        finally:
            response.close()
            response.release_conn()

    def _delete(self, loc: tuple[str, str], rel: str) -> None:
        self.client.remove_object(loc[0], f"{loc[1]}/{rel}")

    def _list(self, loc: tuple[str, str]) -> list[str]:
        start = len(loc[1]) + 1
        try:
            objects = self.client.list_objects(loc[0], prefix=loc[1] + "/", recursive=True)
            return [o.object_name[start:] for o in objects if o.object_name and not o.is_dir]
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return []
            raise
