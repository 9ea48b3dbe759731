"""The one path policy for every file a data set names (image paths, Parquet image structs,
data files in a folder, contamination references); benchmarks (r1vflow.eval.benchmarks.common)
and GitOps experiment files (r1vflow.gitops.plan) apply the same place and kind checks
(r1vflow.config.paths: `lies_inside`, `open_regular`) to the files they read.

- Place: a path resolves (symlinks followed, ``..`` applied) inside the data set's declared
  root: the folder of `data.source.path` (the path itself when it is a folder). Absolute paths,
  ``../`` and symlinks that leave the root are refused before the file is touched, unless
  `data.source.allow_absolute_paths` is true. A source without a folder (a hub data set) has no
  root: only bytes, or absolute paths when allowed.
- Kind: regular files only. The file is opened with O_NONBLOCK | O_NOFOLLOW (a FIFO does not
  block the open, a last component swapped for a symlink after the check fails) and checked
  with fstat before a byte is read: /dev/zero, a FIFO, a socket or a directory is refused.
- Size: at most `max_image_bytes` per file (read stops one byte past the cap), and the image
  header's width x height summed over a row's images at most `max_pixels_per_row`, checked
  before any pixel is decoded.
- Errors: outside the root, one message whatever the cause, so that an import cannot be used to
  learn whether a file exists there; inside it, the cause (missing, not a regular file, too
  large, cannot decode).

Every failure is a `RowError`: one bad row, reported with its ``file:row`` and handled by
`data.on_bad_row`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from r1vflow.config.data_source import MAX_IMAGE_BYTES, MAX_PIXELS_PER_ROW
from r1vflow.config.paths import lies_inside, open_regular
from r1vflow.data.rows import RowError

ALLOW_HINT = "set data.source.allow_absolute_paths: true to read files anywhere"


@dataclass(frozen=True)
class FilePolicy:
    """Where a data set's files may be and how large they may be (see the module doc)."""

    root: Path | None
    allow_absolute: bool = False
    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_PIXELS_PER_ROW

    @classmethod
    def under(cls, path: str | os.PathLike[str] | None, allow_absolute: bool = False,
              max_bytes: int = MAX_IMAGE_BYTES,
              max_pixels: int = MAX_PIXELS_PER_ROW) -> FilePolicy:
        """The policy of a data source at `path` (a file: its folder; None: no root)."""
        if path is None:
            return cls(None, allow_absolute, max_bytes, max_pixels)
        real = Path(os.path.realpath(path))
        return cls(real if real.is_dir() else real.parent, allow_absolute, max_bytes, max_pixels)

    def inside(self, path: Path) -> bool:
        """Whether `path` (symlinks followed) lies inside the root."""
        return self.root is not None and lies_inside(path, self.root)

    def place(self, path: Path) -> Path:
        """The real path of `path`, or RowError when the policy puts it out of reach."""
        if self.inside(path) or self.allow_absolute:
            return Path(os.path.realpath(path))
        if self.root is None:
            raise RowError(f"image {path}: a path, but this data source has no folder; give "
                           f"the image bytes, or {ALLOW_HINT}")
        raise RowError(f"image {path}: outside the data folder {self.root}; {ALLOW_HINT}")

    def read(self, path: Path) -> bytes:
        """The bytes of the regular file at `path`, within the byte budget."""
        real = self.place(path)
        try:
            return read_regular(real, self.max_bytes, f"image {path}")
        except OSError as err:
            error = RowError(f"image {path}: {err.strerror or err}")
        except RowError as err:
            error = err
        raise self.vague(path) or error

    def check_bytes(self, data: bytes, what: str) -> bytes:
        if len(data) > self.max_bytes:
            raise RowError(f"{what}: {len(data):,} bytes, over the budget of "
                           f"{self.max_bytes:,} (data.source.max_image_bytes)")
        return data

    def vague(self, path: Path | None) -> RowError | None:
        """The one error for any failure on a file outside the root (None: inside, or bytes)."""
        if path is None or self.inside(path):
            return None
        return RowError(f"image {path}: not readable as an image (outside the data folder a "
                        "missing, unreadable, oversized or undecodable file gets this one "
                        "message)")


def read_regular(path: Path, max_bytes: int, what: str) -> bytes:
    """Read a regular file of at most `max_bytes` bytes; anything else is a RowError."""
    with open_regular(path, max_bytes, what, RowError, "data.source.max_image_bytes") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew after the stat
        raise RowError(f"{what}: over the budget of {max_bytes:,} bytes "
                       "(data.source.max_image_bytes)")
    return data
