"""Streaming readers of a user's data files: JSONL line by line, Parquet row group by row
group, a hub data set through `datasets` in streaming mode. Each yields
``RawRow``s (location, columns, the folder relative image paths resolve against); no reader
holds more than one row group (Parquet) or one line (JSONL).

`discover` names the published splits of a file or folder: files are grouped by the split name
that opens their file name or names a folder on their path (``train.jsonl``,
``data/validation-00000-of-00001.parquet``, ``test/part-0.parquet``); a single file, or a folder
where no file names a split, is all train (val and test are then carved from it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1vflow.data.files import ALLOW_HINT, FilePolicy
from r1vflow.data.schema import Split
from r1vflow.data.splits import PUBLISHED_NAMES

SUFFIXES = (".jsonl", ".json", ".parquet")
PARQUET_BATCH_ROWS = 64


@dataclass(frozen=True)
class RawRow:
    """One row before validation: ``location`` is ``file:row`` (1-based), ``error`` a reason
    when the row could not even be parsed (bad JSON)."""

    location: str
    columns: dict[str, Any]
    base_dir: Path | None
    error: str | None = None


def split_names(extra: dict[str, str]) -> dict[str, Split]:
    """Published split name -> split: the usual names plus `data.source.splits` ({val: dev})."""
    return {**PUBLISHED_NAMES, **{name: split for split, name in extra.items()}}


def _split_of(rel: Path, names: dict[str, Split]) -> Split | None:
    first = re.split(r"[-_.]", rel.name, maxsplit=1)[0].lower()
    for token in (first, *(p.lower() for p in rel.parts[:-1])):
        if token in names:
            return names[token]
    return None


def discover(path: Path, extra_names: dict[str, str],
             allow_outside: bool = False) -> dict[Split | None, list[Path]]:
    """Data files by published split; key None: one unsplit group (treated as train). In a
    folder, a data file that is a symlink out of it is refused unless `allow_outside`
    (data.source.allow_absolute_paths)."""
    if not path.exists():
        raise FileNotFoundError(f"data.source.path {path} does not exist")
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise ValueError(f"{path}: not a data file; expected one of {', '.join(SUFFIXES)}")
        return {None: [path]}
    files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise ValueError(f"{path}: no {'/'.join(SUFFIXES)} files in this folder")
    policy = FilePolicy.under(path, allow_absolute=allow_outside)
    for file in files:
        if not (allow_outside or policy.inside(file)):
            raise ValueError(f"{file}: a data file that leads out of the folder {path} "
                             f"(symlink); {ALLOW_HINT}")
    names = split_names(extra_names)
    groups: dict[Split | None, list[Path]] = {}
    for file in files:
        groups.setdefault(_split_of(file.relative_to(path), names), []).append(file)
    if None in groups and len(groups) > 1:
        unnamed = ", ".join(str(p.relative_to(path)) for p in groups[None][:5])
        raise ValueError(f"{path}: some files name a split ({', '.join(sorted(map(str, groups.keys() - {None})))}) "
                         f"and some do not ({unnamed}); name every file train/val/test (or map "
                         "names with data.source.splits), or point data.source.path at one file")
    return groups


def iter_jsonl(path: Path) -> Iterator[RawRow]:
    """Rows of a JSON-lines file, one line at a time; blank lines are skipped. A line that is
    not UTF-8, not JSON, nested too deep for the parser, holding a lone surrogate (``\\ud800``,
    not a character) or not an object is a row with an `error`: one bad row, never the end of
    the import."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            location = f"{path}:{number}"
            value, error = _json_row(raw)
            yield RawRow(location, value if error is None else {}, path.parent, error)


_SURROGATE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _json_row(raw: bytes) -> tuple[Any, str | None]:
    """(the row's object, None) or (None, why the line is not a row)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 text ({err.reason} at byte {err.start})"
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg})"
    except RecursionError:
        return None, "JSON nested deeper than the parser allows"
    if _SURROGATE.search(line):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None, "a lone surrogate escape (\\ud800-\\udfff alone is not a character)"
    if not isinstance(value, dict):
        return None, f"a row must be a JSON object, got {type(value).__name__}"
    return value, None


def iter_parquet(path: Path, wanted: set[str]) -> Iterator[RawRow]:
    """Rows of a Parquet file, one row group at a time (then `PARQUET_BATCH_ROWS` rows at a
    time), only the `wanted` columns that exist; Hugging Face image columns arrive as
    {bytes, path} dicts. Not `iter_batches`: it reads ahead, and its peak memory grew with the
    file (measured: 2,000 vs 4,000 rows of 48 KB images, +108 MiB; row groups: +0)."""
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except Exception as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from err
    columns = [c for c in reader.schema_arrow.names if c in wanted]
    number = 0
    for group in range(reader.num_row_groups):
        table = reader.read_row_group(group, columns=columns)
        for batch in table.to_batches(max_chunksize=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                number += 1
                yield RawRow(f"{path}:{number}", row, path.parent)
        del table


def iter_file(path: Path, wanted: set[str]) -> Iterator[RawRow]:
    return iter_parquet(path, wanted) if path.suffix == ".parquet" else iter_jsonl(path)


def file_columns(path: Path, probe_rows: int = 100) -> set[str]:
    """Column names of a data file: the Parquet schema, or the keys of its first JSONL rows."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return set(pq.ParquetFile(path).schema_arrow.names)
    keys: set[str] = set()
    for k, row in enumerate(iter_jsonl(path)):
        if k >= probe_rows:
            break
        keys |= set(row.columns)
    return keys


# ----------------------------------------------------------------------------- hub
def hub_splits(hub, extra_names: dict[str, str]) -> dict[Split, str]:
    """Our split -> the hub data set's split name, for the splits it publishes."""
    import datasets

    published = datasets.get_dataset_split_names(hub.id, hub.name, revision=hub.revision)
    names = split_names(extra_names)
    found: dict[Split, str] = {}
    for name in published:
        split = names.get(name.lower())
        if split is not None and split not in found:
            found[split] = name
    if "train" not in found:
        raise ValueError(f"hub data set {hub.id}@{hub.revision[:12]} publishes splits "
                         f"{published} but none is train; map one with data.source.splits")
    return found


def iter_hub(hub, split_name: str) -> Iterator[RawRow]:
    """Rows of one split of a hub data set, streamed (images as {bytes, path}: not decoded)."""
    import datasets

    ds = datasets.load_dataset(hub.id, hub.name, revision=hub.revision, split=split_name,
                               streaming=True).decode(False)
    for number, row in enumerate(ds, start=1):
        yield RawRow(f"{hub.id}@{hub.revision[:12]}/{split_name}:{number}", row, None)


def hub_columns(hub, extra_names: dict[str, str]) -> set[str]:
    """Column names of the hub data set: the keys of the first row of each split it publishes
    (streamed; its declared features are not always known before reading)."""
    columns: set[str] = set()
    for name in hub_splits(hub, extra_names).values():
        for row in iter_hub(hub, name):
            columns |= set(row.columns)
            break
    return columns
