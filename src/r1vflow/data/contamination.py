"""Contamination check: which training samples share an image or a question with evaluation sets.

Pure over iterables: an evaluation set is an iterable of `EvalItem` (its id, its normalised
question, the pixel hashes of its images); `ContaminationIndex` holds only those hashes and
questions, so the training data can stream past it one sample at a time.

A training sample matches a reference when one of its images has the same pixel hash as one of
the reference's images, or when its normalised question (r1vflow.data.rows.normalise_question)
equals one of the reference's and is at least `min_question_chars` long (so that generic prompts
such as "What is the answer?" do not match everything).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from r1vflow.data.rows import normalise_question


@dataclass(frozen=True)
class EvalItem:
    """One evaluation item as the check needs it."""

    id: str
    question: str  # normalised
    image_hashes: tuple[str, ...]

    @classmethod
    def of(cls, item_id: str, question: str, image_hashes: Iterable[str]) -> EvalItem:
        return cls(str(item_id), normalise_question(question), tuple(image_hashes))


@dataclass(frozen=True)
class Match:
    """A training sample's match: which reference, on what (image or question), which item."""

    reference: str
    reason: str  # "image" or "question"
    item_id: str


@dataclass
class ContaminationIndex:
    """Image hashes and normalised questions of every reference -> (reference, item id)."""

    min_question_chars: int
    images: dict[str, tuple[str, str]] = field(default_factory=dict)
    questions: dict[str, tuple[str, str]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, references: Mapping[str, Iterable[EvalItem]],
              min_question_chars: int) -> ContaminationIndex:
        index = cls(min_question_chars)
        for name, items in references.items():
            index.sizes[name] = 0
            for item in items:
                index.sizes[name] += 1
                for digest in item.image_hashes:
                    index.images.setdefault(digest, (name, item.id))
                if len(item.question) >= min_question_chars:
                    index.questions.setdefault(item.question, (name, item.id))
        return index

    def matches(self, item: EvalItem) -> list[Match]:
        """Every reference the (normalised) item meets, image matches first; empty when clean."""
        found = [Match(self.images[h][0], "image", self.images[h][1])
                 for h in item.image_hashes if h in self.images]
        if len(item.question) >= self.min_question_chars and item.question in self.questions:
            name, item_id = self.questions[item.question]
            found.append(Match(name, "question", item_id))
        return found


def find_contamination(train: Iterable[EvalItem], references: Mapping[str, Iterable[EvalItem]],
                       min_question_chars: int = 20) -> dict[str, object]:
    """Count training items that match any reference.

    Returns {"contaminated": n training items with a match, "by_reference": {name: n},
    "by_reason": {"image": n, "question": n}, "ids": [matched training ids]} (an item is
    counted once overall, and once per reference and reason it meets)."""
    index = ContaminationIndex.build(references, min_question_chars)
    by_reference: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    ids = []
    for item in train:
        found = index.matches(item)
        if found:
            ids.append(item.id)
            by_reference.update({m.reference for m in found})
            by_reason.update({m.reason for m in found})
    return {"contaminated": len(ids), "by_reference": dict(by_reference),
            "by_reason": dict(by_reason), "ids": ids}
