"""Evaluation sets for the contamination check, as `EvalItem`s (question + image hashes).

A `files` reference is read with the same readers and column mapping as `data.source` files (only
the question and image columns matter); a `benchmark` reference comes from
`r1vflow.eval.benchmarks.iter_items(name, path, split=..., limit=...)`, which yields items with
`id`, `question` and `images` (PIL images, encoded bytes, {bytes, path} structs or paths).
A reference row that cannot be read is an error naming its file and row: a check that silently
skipped part of an evaluation set would undercount.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from r1vflow.config.data_source import ContaminationReference
from r1vflow.data import readers
from r1vflow.data.contamination import EvalItem
from r1vflow.data.files import FilePolicy
from r1vflow.data.rows import RowError, decode_image, image_refs, pixel_hash


def _hashes(images: Any, base_dir: Path | None, column: str,
            policy: FilePolicy) -> list[str]:
    items = images if isinstance(images, list | tuple) else [images]
    out = []
    for item in items:
        if isinstance(item, Image.Image):
            out.append(pixel_hash(item))
        else:
            out += [pixel_hash(decode_image(ref, policy)[0])
                    for ref in image_refs(item, base_dir, column)]
    return out


def _file_items(ref: ContaminationReference) -> Iterator[EvalItem]:
    columns = ref.columns
    groups = readers.discover(Path(ref.path), {})
    policy = FilePolicy.under(ref.path)
    names = readers.split_names({})
    wanted = None if ref.split is None else names.get(ref.split.lower(), ref.split)
    count = 0
    for split, files in groups.items():
        if wanted is not None and split not in (wanted, None):
            continue
        for file in files:
            for raw in readers.iter_file(file, set(columns.model_dump().values())):
                if ref.limit is not None and count >= ref.limit:
                    return
                try:
                    if raw.error:
                        raise RowError(raw.error)
                    question = raw.columns.get(columns.question)
                    if not isinstance(question, str):
                        raise RowError(f"no question text (column {columns.question!r})")
                    column = columns.images if raw.columns.get(columns.images) else columns.image
                    value = raw.columns.get(column)
                    hashes = [] if value is None else _hashes(value, raw.base_dir, column,
                                                              policy)
                except RowError as err:
                    raise ValueError(f"contamination reference {ref.name}: {raw.location}: "
                                     f"{err}") from None
                count += 1
                yield EvalItem.of(raw.columns.get(columns.id, raw.location), question, hashes)


def _benchmark_items(ref: ContaminationReference) -> Iterator[EvalItem]:
    from r1vflow.eval.benchmarks import iter_items  # the benchmark loaders (issue 12, eval half)

    policy = FilePolicy.under(ref.path)
    for item in iter_items(ref.name, ref.path, split=ref.split, limit=ref.limit):
        get = item.get if isinstance(item, dict) else (lambda key, o=item: getattr(o, key))
        yield EvalItem.of(get("id"), get("question"),
                          _hashes(get("images") or [], None, "images", policy))


def reference_items(ref: ContaminationReference) -> Iterator[EvalItem]:
    """The items of one configured evaluation set."""
    return _benchmark_items(ref) if ref.kind == "benchmark" else _file_items(ref)
