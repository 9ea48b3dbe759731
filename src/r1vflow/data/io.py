"""Reading and writing data set directories (layout: see r1vflow.data.synth).

Readers validate every row against the schema and name the file and line of a bad one. Writers
are atomic (temporary file in the same directory, then rename), so a crash never leaves a
half-written file under its final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ValidationError

from r1vflow.data.schema import SPLITS, CaptionSample, DatasetInfo, PreferencePair, Sample, Split

INFO_FILE = "dataset.json"
CAPTIONS_FILE = "captions.jsonl"
PREFERENCES_FILE = "preferences.jsonl"
IMAGES_DIR = "images"

RecordT = TypeVar("RecordT", bound=BaseModel)


def split_file(split: Split) -> str:
    """File name of a split: ``train.jsonl``, ``val.jsonl`` or ``test.jsonl``."""
    return f"{split}.jsonl"


# ----------------------------------------------------------------------------- writing
def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (r1vflow.storage.atomic, the one helper)."""
    from r1vflow.storage.atomic import write_bytes

    write_bytes(path, data, durable=False)


def write_jsonl(path: str | os.PathLike[str], records: Iterable[BaseModel]) -> int:
    """Atomically write one JSON object per line; returns the number of rows written."""
    lines = [record.model_dump_json() + "\n" for record in records]
    atomic_write_bytes(path, "".join(lines).encode("utf-8"))
    return len(lines)


class JsonlWriter:
    """Append records one at a time to a temporary dot-file; `close()` renames it into place
    (an import that fails leaves no file under the final name). Use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path, self.rows = Path(path), 0
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                         dir=self.path.parent)
        self._handle = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, record: BaseModel) -> None:
        self._handle.write(record.model_dump_json() + "\n")
        self.rows += 1

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._handle.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            Path(self._tmp).unlink(missing_ok=True)


def write_info(dataset_dir: str | os.PathLike[str], info: DatasetInfo) -> None:
    """Atomically write ``dataset.json`` (call it last: its presence marks a complete set)."""
    text = json.dumps(info.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(Path(dataset_dir) / INFO_FILE, text.encode("utf-8"))


# ----------------------------------------------------------------------------- reading
def _describe(err: ValidationError) -> str:
    """One line per problem: ``field: message``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(row)'}: {e['msg']}" for e in err.errors())


def _load_jsonl(path: Path, model: type[RecordT]) -> list[RecordT]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is this a data set directory?)")
    records = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{number}: not UTF-8 text ({err.reason} at byte "
                                 f"{err.start}); rewrite the file as UTF-8 JSON lines") from None
            if not line.strip():
                continue
            try:
                records.append(model.model_validate_json(line))
            except ValidationError as err:
                raise ValueError(
                    f"{path}:{number}: invalid {model.__name__} row: {_describe(err)}"
                ) from err
    return records


def load_split(dataset_dir: str | os.PathLike[str], split: Split) -> list[Sample]:
    """All samples of one split; a row whose ``split`` field disagrees is an error."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(dataset_dir) / split_file(split)
    samples = _load_jsonl(path, Sample)
    for number, sample in enumerate(samples, start=1):
        if sample.split != split:
            raise ValueError(
                f"{path}: sample {sample.id!r} (row {number}) has split={sample.split!r}, "
                f"expected {split!r}"
            )
    return samples


def load_captions(dataset_dir: str | os.PathLike[str]) -> list[CaptionSample]:
    """All rows of ``captions.jsonl``."""
    return _load_jsonl(Path(dataset_dir) / CAPTIONS_FILE, CaptionSample)


def load_preferences(dataset_dir: str | os.PathLike[str]) -> list[PreferencePair]:
    """All rows of ``preferences.jsonl``."""
    return _load_jsonl(Path(dataset_dir) / PREFERENCES_FILE, PreferencePair)


def read_info(dataset_dir: str | os.PathLike[str]) -> DatasetInfo:
    """Parse ``dataset.json``; ``info.root`` is set to ``dataset_dir``."""
    path = Path(dataset_dir) / INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (synthesis incomplete or wrong directory?)")
    try:
        return DatasetInfo.model_validate(
            {**json.loads(path.read_text("utf-8")), "root": path.parent}
        )
    except (ValidationError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: invalid dataset info: {err}") from err


def load_image(dataset_dir: str | os.PathLike[str], rel: str) -> Image.Image:
    """Open an image named relative to the data set directory, as RGB (fully loaded)."""
    root = Path(dataset_dir).resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"image path {rel!r} points outside the data set directory {root}")
    with Image.open(path) as image:
        return image.convert("RGB")


def images_to_tensor(images: Sequence[Image.Image], image_size: int) -> torch.Tensor:
    """Stack images into a float tensor [B, 3, image_size, image_size] scaled to [-1, 1].

    SigLIP convention: ``pixel / 127.5 - 1``. Images of another size are resized (bilinear).
    """
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.float32))
    if not arrays:
        return torch.empty(0, 3, image_size, image_size)
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return (batch / 127.5 - 1.0).contiguous()


def dataset_digest(dataset_dir: str | os.PathLike[str]) -> str:
    """sha256 over every file's relative POSIX path and bytes, in sorted path order.

    ``dataset.json`` (which stores the digest) and dot-files (temporary files) are excluded.
    """
    root = Path(dataset_dir)
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    digest = hashlib.sha256()
    for rel in files:
        if rel == INFO_FILE:
            continue
        path = root / rel
        digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:  # in chunks: a large split never sits in memory
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
