"""AIME 2024 (HuggingFaceH4/aime_2024): 30 problems whose answers are integers 0..999.

Layout: ``data/train-*.parquet`` (the file, its folder or the data set root), columns ``id``,
``problem``, ``answer`` (and ``solution``, ``url``, ``year``). Text only.

Scoring: AIME's own rule, an integer answer: the last integer in the final answer
(`common.math_answer`: ``<answer>`` tags, ``# Answer`` section, ``\\boxed{}`` or "The answer
is ..."; thousands separators and leading zeros allowed, ``033`` = 33) must equal the gold
integer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from r1vflow.eval.benchmarks.common import (
    Item,
    Verdict,
    iter_parquet_rows,
    math_answer,
    parquet_files,
)

DEFAULT_SPLIT = "train"
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_INTEGER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?!\d)|-?\d+")


def load(path: Path, split: str | None, subsets: list[str] | None = None) -> Iterator[Item]:
    """AIME 2024 items (the data set publishes one split, ``train``)."""
    split = split or DEFAULT_SPLIT
    files = parquet_files(path, f"**/{split}-*.parquet")
    for _, row in iter_parquet_rows(files, ["id", "problem", "answer"]):
        yield Item(id=str(row["id"]), question=row["problem"],
                   prompt=f"{row['problem']}\n\n{INSTRUCTION}", images=[],
                   answer=str(row["answer"]).strip())


def grade(item: Item, response: str) -> Verdict:
    """Right when the last integer of the answer span equals the gold integer."""
    numbers = _INTEGER.findall(math_answer(response))
    extracted = str(int(numbers[-1].replace(",", ""))) if numbers else None
    return Verdict(extracted=extracted, correct=extracted is not None
                   and int(extracted) == int(item.answer))
