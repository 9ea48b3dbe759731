"""Import a user's data set (files or hub) into r1vflow's data set layout, streaming.

Rows are read one at a time (r1vflow.data.readers), validated (r1vflow.data.rows), placed in a
split without overlap (r1vflow.data.splits), checked against the evaluation sets of
`data.contamination` (r1vflow.data.contamination), and written at once: images to
``images/<shard>/`` (1,000 samples a shard), rows appended to the split files. Nothing but
short digests of ids, images and reference questions stays in memory, so peak memory does not
grow with the number of images (docs/data.md has the measurement).

The output is the layout synthesize_data writes (train/val/test.jsonl, captions.jsonl,
preferences.jsonl, images/, dataset.json with the digest) plus ``import.json``: the source, the
rows read, every skipped row as ``file:row: reason``, and the contamination counts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from r1vflow.config.data_source import ContaminationConfig, DataSourceConfig
from r1vflow.data import readers
from r1vflow.data.contamination import ContaminationIndex, EvalItem
from r1vflow.data.files import FilePolicy
from r1vflow.data.io import (
    CAPTIONS_FILE,
    IMAGES_DIR,
    PREFERENCES_FILE,
    JsonlWriter,
    atomic_write_bytes,
    dataset_digest,
    split_file,
    write_info,
)
from r1vflow.data.references import reference_items
from r1vflow.data.rows import (
    ParsedRow,
    RowError,
    decode_images,
    derived_pair,
    montage,
    parse_row,
    pixel_hash,
)
from r1vflow.data.schema import (
    SPLITS,
    CaptionSample,
    DatasetInfo,
    PreferencePair,
    Sample,
    Split,
)
from r1vflow.data.splits import SplitGuard, carve

IMPORT_FILE = "import.json"
SHARD_SIZE = 1000


class ContaminationError(ValueError):
    """Training samples match an evaluation set and `data.contamination.action` is fail."""


@dataclass
class ImportResult:
    """What an import did: the data set's info, and the import's own counts and bad rows."""

    info: DatasetInfo
    rows_read: int
    bad_rows: list[str]  # "file:row: reason", every skipped row
    contaminated: dict[str, int]  # reference -> training samples dropped for it
    with_solution: int
    pairs_by_split: dict[str, int]
    reference_sizes: dict[str, int]  # contamination reference -> items read from it

    @property
    def rows_skipped(self) -> int:
        return len(self.bad_rows)


@dataclass
class _Group:
    """Rows of one published split (None: unsplit, carved here) and how to name their ids."""

    split: Split | None
    rows: Iterable[readers.RawRow]
    label: str


def source_label(source: DataSourceConfig) -> str:
    """Where the data comes from, for dataset.json and the MLflow input."""
    if source.kind == "hub":
        return f"hub:{source.hub.id}@{source.hub.revision}"
    return str(Path(source.path).resolve())


def _limited(rows: Iterable[readers.RawRow], limit: int | None) -> Iterator[readers.RawRow]:
    for k, row in enumerate(rows):
        if limit is not None and k >= limit:
            return
        yield row


def _groups(source: DataSourceConfig) -> list[_Group]:
    """The published splits in order train, val, test (unsplit data first, as train)."""
    wanted = set(source.columns.model_dump().values())
    if source.kind == "hub":
        found = readers.hub_splits(source.hub, source.splits)
        return [_Group(s, _limited(readers.iter_hub(source.hub, found[s]), source.max_rows), s)
                for s in SPLITS if s in found]
    groups = readers.discover(Path(source.path), source.splits, source.allow_absolute_paths)
    out = []
    for split in (None, *SPLITS):
        for file in groups.get(split, []):
            rows = _limited(readers.iter_file(file, wanted), source.max_rows)
            out.append(_Group(split, rows, file.stem))
    return out


class _Writer:
    """The open output files of an import, and the next sample number."""

    def __init__(self, out: Path, derive_pairs: bool) -> None:
        self.out, self.n, self.derive_pairs = out, 0, derive_pairs
        self.splits = {s: JsonlWriter(out / split_file(s)) for s in SPLITS}
        self.captions = JsonlWriter(out / CAPTIONS_FILE)
        self.pairs = JsonlWriter(out / PREFERENCES_FILE)
        self.kinds: Counter[str] = Counter()
        self.pair_splits: Counter[str] = Counter()

    def files(self) -> list[JsonlWriter]:
        return [*self.splits.values(), self.captions, self.pairs]

    def images(self, decoded: list[tuple]) -> tuple[str, list[str]]:
        """Write a sample's images; (the image a one-image model sees, all of them when >1)."""
        shard = f"{IMAGES_DIR}/{self.n // SHARD_SIZE:04d}"
        (self.out / shard).mkdir(parents=True, exist_ok=True)
        if len(decoded) == 1:
            _, data, ext = decoded[0]
            rel = f"{shard}/{self.n:07d}.{ext}"
            atomic_write_bytes(self.out / rel, data)
            return rel, []
        originals = []
        for k, (_, data, ext) in enumerate(decoded, start=1):
            originals.append(f"{shard}/{self.n:07d}-{k}.{ext}")
            atomic_write_bytes(self.out / originals[-1], data)
        rel = f"{shard}/{self.n:07d}.png"
        sheet = montage([image for image, _, _ in decoded])
        sheet.save(self.out / rel, format="PNG")
        return rel, originals

    def sample(self, row: ParsedRow, row_id: str, split: Split, decoded: list[tuple],
               location: str) -> None:
        image, images = self.images(decoded)
        meta = {"source": location, "answer_kind": row.answer_kind}
        if row.choices:
            meta["choices"] = list(row.choices)
        self.splits[split].write(Sample(
            id=row_id, family=row.answer_kind, split=split, image=image, question=row.question,
            reasoning=row.reasoning or "", answer=row.answer, meta=meta, images=images))
        if row.caption:
            self.captions.write(CaptionSample(id=f"cap-{row_id}", split=split, image=image,
                                              caption=row.caption))
        pair = (row.chosen, row.rejected, "imported") if row.chosen else None
        if pair is None and self.derive_pairs:
            pair = derived_pair(row, self.n)
        if pair is not None:
            self.pairs.write(PreferencePair(
                id=f"pair-{row_id}", split=split, image=image, question=row.question,
                chosen=pair[0], rejected=pair[1], kind=pair[2], answer=row.answer))
            self.pair_splits[split] += 1
        self.kinds[row.answer_kind] += 1
        self.n += 1


@dataclass
class _Run:
    """State of one import while rows stream past."""

    source: DataSourceConfig
    on_bad_row: str
    contamination: ContaminationConfig
    index: ContaminationIndex | None
    guard: SplitGuard
    writer: _Writer
    fractions: tuple[float, float]
    policy: FilePolicy
    rows_read: int = 0
    with_solution: int = 0
    bad_rows: list[str] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)

    def row(self, group: _Group, raw: readers.RawRow, number: int) -> None:
        if raw.error:
            raise RowError(raw.error)
        row = parse_row(raw.columns, self.source.columns, raw.base_dir)
        decoded = decode_images(row.images, self.policy)
        hashes = [pixel_hash(image) for image, _, _ in decoded]
        row_id = row.id or f"{group.label}-{number:06d}"
        carved = group.split is None or (group.split == "train" and any(self.fractions))
        wanted = carve(row_id, self.source.seed, *self.fractions) if carved else group.split
        split = self.guard.place(row_id, hashes, wanted, raw.location, carved)
        if split == "train" and self.index is not None:
            matches = self.index.matches(EvalItem.of(row_id, row.question, hashes))
            if matches:
                found = "; ".join(f"{m.reason} of {m.reference} item {m.item_id}"
                                  for m in matches)
                if self.contamination.action == "fail":
                    raise ContaminationError(
                        f"{raw.location}: training sample {row_id!r} shares the {found}; set "
                        "data.contamination.action=drop to leave such samples out")
                self.dropped.update({m.reference for m in matches})
                return
        self.with_solution += row.reasoning is not None
        self.writer.sample(row, row_id, split, decoded, raw.location)

    def consume(self, groups: list[_Group]) -> None:
        for group in groups:
            for number, raw in enumerate(group.rows, start=1):
                self.rows_read += 1
                try:
                    self.row(group, raw, number)
                except RowError as err:
                    if self.on_bad_row == "fail":
                        raise ValueError(f"{raw.location}: {err} (data.on_bad_row=skip leaves "
                                         "such rows out)") from None
                    self.bad_rows.append(f"{raw.location}: {err}")


def file_policy(source: DataSourceConfig) -> FilePolicy:
    """Where the source's image files may be, and their byte and pixel budgets."""
    return FilePolicy.under(source.path if source.kind == "files" else None,
                            source.allow_absolute_paths, source.max_image_bytes,
                            source.max_pixels_per_row)


def build_index(contamination: ContaminationConfig) -> ContaminationIndex | None:
    """The evaluation sets' questions and image hashes, or None without references."""
    if not contamination.references:
        return None
    return ContaminationIndex.build({ref.name: reference_items(ref)
                                     for ref in contamination.references},
                                    contamination.min_question_chars)


def import_dataset(out_dir: str | Path, source: DataSourceConfig, *, on_bad_row: str,
                   contamination: ContaminationConfig, image_size: int) -> ImportResult:
    """Import `source` into the empty directory `out_dir`; dataset.json is written last."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; import into an empty directory")
    groups = _groups(source)
    published = {g.split for g in groups}
    fractions = (0.0 if "val" in published else source.val_fraction,
                 0.0 if "test" in published else source.test_fraction)
    carved = frozenset(s for s, f in zip(("val", "test"), fractions, strict=True) if f > 0)
    with ExitStack() as stack:  # on an error every split file's temporary is removed
        writer = _Writer(out, source.derive_pairs)
        for handle in writer.files():
            stack.enter_context(handle)
        run = _Run(source, on_bad_row, contamination, build_index(contamination),
                   SplitGuard(carved), writer, fractions, file_policy(source))
        run.consume(groups)
    counts = {s: writer.splits[s].rows for s in SPLITS}
    empty = [s for s in SPLITS if not counts[s]]
    if empty:
        raise ValueError(f"after the import the {', '.join(empty)} split(s) hold no samples "
                         f"(rows read {run.rows_read}, skipped {len(run.bad_rows)}, per split "
                         f"{counts}); publish them, or raise data.source.val_fraction / "
                         "test_fraction")
    counts |= {"captions": writer.captions.rows, "preferences": writer.pairs.rows,
               "images": writer.n}
    report = {"source": source_label(source), "rows_read": run.rows_read,
              "rows_skipped": len(run.bad_rows), "bad_rows": run.bad_rows,
              "contamination": {"references": dict(run.index.sizes) if run.index else {},
                                "dropped": dict(run.dropped), "action": contamination.action},
              "with_solution": run.with_solution, "answer_kinds": dict(writer.kinds)}
    atomic_write_bytes(out / IMPORT_FILE, (json.dumps(report, indent=2) + "\n").encode())
    files = {s: split_file(s) for s in SPLITS} | {
        "captions": CAPTIONS_FILE, "preferences": PREFERENCES_FILE, "images": IMAGES_DIR,
        "import": IMPORT_FILE}
    info = DatasetInfo(digest=dataset_digest(out), counts=counts,
                       families=sorted(writer.kinds), image_size=image_size, seed=source.seed,
                       files=files, source=source_label(source), root=out)
    write_info(out, info)
    return ImportResult(info, run.rows_read, run.bad_rows, dict(run.dropped), run.with_solution,
                        dict(writer.pair_splits), dict(run.index.sizes) if run.index else {})
