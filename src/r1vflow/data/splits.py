"""Assigning imported rows to train / val / test without overlap (pure, streaming).

Published splits are kept. Splits that are not published are carved from train: a row goes to
val when ``u < val_fraction``, to test when ``u < val_fraction + test_fraction``, where ``u`` is
a uniform number from sha256(seed, row id), so the carving needs no pass over the whole data and
the same seed and ids give the same splits. `SplitGuard` then makes the splits disjoint by row
id and by image (pixel hash): a carved row whose image is already in a split joins that split;
a row of a *published* split that shares an id or an image with another split is an error
(`RowError`: the caller reports or skips it). Memory: one short digest per id and per image,
never the images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from r1vflow.data.rows import RowError
from r1vflow.data.schema import Split

# Published split names (file-name or hub split) -> our split.
PUBLISHED_NAMES: dict[str, Split] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testmini": "test",
}


def carve(row_id: str, seed: int, val_fraction: float, test_fraction: float) -> Split:
    """train, val or test for a train row, by a seeded hash of its id."""
    digest = hashlib.sha256(f"r1vflow-carve:{seed}:{row_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < val_fraction:
        return "val"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=12).digest()


@dataclass
class SplitGuard:
    """Remembers which split every id and image went to, and where it was first seen.

    `carved` are the splits made from train here (not published): rows may move into them."""

    carved: frozenset[Split]
    _ids: dict[bytes, str] = field(default_factory=dict)  # id key -> location
    _images: dict[bytes, tuple[Split, str]] = field(default_factory=dict)

    def place(self, row_id: str, image_hashes: list[str], split: Split, location: str,
              carved_from_train: bool) -> Split:
        """The split the row goes to, recording it; `split` is the published one, or the
        carved one when `carved_from_train`. Raises RowError on a shared id or a leak."""
        key = _key(row_id)
        if key in self._ids:
            raise RowError(f"id {row_id!r} already used by {self._ids[key]}")
        owners = {self._images[k] for k in map(_key, image_hashes) if k in self._images}
        splits = {s for s, _ in owners}
        if carved_from_train and splits:
            movable = splits <= (self.carved | {"train"})
            if len(splits) > 1 or not movable:
                raise RowError(self._leak(split, owners))
            split = splits.pop()
        elif splits - {split}:
            raise RowError(self._leak(split, owners))
        self._ids[key] = location
        for k in map(_key, image_hashes):
            self._images.setdefault(k, (split, location))
        return split

    @staticmethod
    def _leak(split: Split, owners: set[tuple[Split, str]]) -> str:
        where = ", ".join(f"{s} ({loc})" for s, loc in sorted(owners))
        return f"its image is already in {where}; a {split} row must not share an image with " \
               "another split"
