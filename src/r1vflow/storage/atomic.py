"""Atomic writes: every file and directory r1vflow writes appears whole or not at all.

A file is written to a temporary name in the same directory (same filesystem), flushed and
fsynced, then `os.replace`d over the target; a directory is filled under a temporary name and
renamed into place. A process killed at any moment leaves either the old content or the new,
plus at most a `.r1vflow-tmp-*` leftover that readers ignore and the next writer may remove.

    write_text(path, json.dumps(summary))
    with atomic_dir(out) as tmp:      # fill tmp; it becomes `out` when the block ends
        model.save_pretrained(tmp)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".r1vflow-tmp-"


def write_bytes(path: str | Path, data: bytes, durable: bool = True) -> Path:
    """Write `data` to `path` atomically (temp file in the same directory + os.replace);
    `durable` fsyncs before the rename (off for many small files, e.g. synthesized images)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; on success it replaces `target`.

    An existing `target` (a stage's KFP output dir, a previous attempt) is moved aside first
    and removed after the rename, so a reader sees the old directory or the new one, never a
    half-written one. On an exception the temporary directory is removed and `target` is
    left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{TMP_PREFIX}{target.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, target)


def replace_dir(source: Path, target: Path) -> None:
    """Rename directory `source` to `target`, replacing what `target` held."""
    old = None
    if target.exists():
        old = target.parent / f"{TMP_PREFIX}{target.name}.old.{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    os.rename(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class OutputDirBusy(RuntimeError):
    """Another process holds the output dir's lock."""


LOCK_NAME = ".r1vflow.lock"


@contextlib.contextmanager
def output_lock(directory: str | Path) -> Iterator[Path]:
    """Hold an exclusive flock on `<directory>/.r1vflow.lock` while inside.

    The kernel drops the lock when the holder exits, however it exits (SIGKILL included), so a
    run after a killed one starts. A second holder gets OutputDirBusy at once, naming the
    first one's pid and start time (written into the lock file)."""
    import fcntl
    import time

    path = Path(directory) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (held open for the whole block)
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputDirBusy(
                f"output dir {directory} is in use by {holder}: wait for that run to end, or "
                "give another --output-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"r1vflow run pid {os.getpid()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield path
    finally:
        handle.close()
