"""The place and kind checks of the one path policy (docs/reliability.md), with nothing but the
standard library so that every layer, the GitOps planner under a memory limit included, can use
them: `lies_inside` (is a path, symlinks followed, under a root?) and `open_regular` (open a
regular file within a byte budget; anything else refused before a byte is read).

The data sets' policy (r1vflow.data.files: roots, budgets, one vague message outside the root),
the benchmarks' files (r1vflow.eval.benchmarks.common) and GitOps experiment files
(r1vflow.gitops.plan) are built on these two.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO


def lies_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether `path`, symlinks followed and ``..`` applied, is `root` or below it (the root's
    own symlinks followed too)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def open_regular(path: str | os.PathLike[str], max_bytes: int, what: str,
                 error: type[Exception] = ValueError, budget: str = "its size bound") -> BinaryIO:
    """`path` opened for reading if it is a regular file of at most `max_bytes` bytes, else
    `error` (``what: why``; `budget` names the setting that bounds the size). O_NONBLOCK: a
    FIFO does not block the open; O_NOFOLLOW: a last component that is (or was swapped for) a
    symlink fails; fstat before a byte is read: /dev/zero, a FIFO, a socket or a directory is
    refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise error(f"{what}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what}: not a regular file")
        if info.st_size > max_bytes:
            raise error(f"{what}: {info.st_size:,} bytes, over the budget of {max_bytes:,} "
                        f"({budget})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
