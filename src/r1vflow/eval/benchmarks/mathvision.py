"""MathVision (MathLLMs/MathVision): loader and answer matching after MATH-V's evaluation.

Two published layouts. The hub's: ``data/{test,testmini}-*.parquet`` (the file, its folder or
the data set root), columns ``id``, ``question`` (``<image1>`` references kept), ``options`` (a
list, empty for free-form), ``decoded_image`` (a ``{bytes, path}`` struct), ``answer`` (a letter
for multiple choice), ``level`` and ``subject``. The authors' GitHub repository (mathllm/MATH-V,
read from its root folder): ``data/{test,testmini}.jsonl`` with the same fields and ``image``,
the image's path under the root (``images/4.jpg``). The test split by default.

Scoring, after the final answer (`common.math_answer`: ``<answer>`` tags, ``# Answer``,
``\\boxed{}``, MATH-V's own "the answer is ..." phrases): as MATH-V's ``evaluation/evaluate.py``, an answer is right
when it equals the gold answer or, for multiple choice, the gold option's text; a span like
``(B)`` or ``B.`` counts as the letter B. Equality is case-insensitive string equality, then
math-verify's equivalence where MATH-V compares with its own LaTeX-to-sympy code (departure).
Breakdowns by ``subject`` and ``level``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from r1vflow.eval.benchmarks.common import (
    BenchmarkDataError,
    Item,
    Verdict,
    checked_files,
    image_bytes,
    iter_jsonl_rows,
    iter_parquet_rows,
    math_answer,
    math_verify_equal,
    open_checked,
    parquet_files,
)

DEFAULT_SPLIT = "test"
MC_INSTRUCTION = "Please answer with the option letter (A, B, C, D or E)."
_LETTER = re.compile(r"^\(?([A-Ea-e])\)?[.:]?$")


_COLUMNS = ["id", "question", "options", "answer", "subject", "level"]


def _github_rows(root: Path, split: str) -> Iterator[dict]:
    """MATH-V's rows with ``decoded_image`` read from the file its ``image`` names (a path
    under ``root``; one outside it is refused)."""
    for where, row in iter_jsonl_rows(root, f"data/{split}.jsonl", [*_COLUMNS, "image"]):
        image = None
        if row["image"]:
            file = root / str(row["image"])
            try:
                checked_files(root, [file])
            except BenchmarkDataError:
                raise BenchmarkDataError(f"{where}: image {row['image']!r} lies outside the "
                                         f"benchmark folder {root}: refused, not read") from None
            try:
                with open_checked(file) as handle:  # missing, not a regular file, too large
                    image = handle.read()
            except BenchmarkDataError as err:
                raise BenchmarkDataError(f"{where}: image {row['image']!r}: {err}") from None
        yield {**row, "decoded_image": image}


def _rows(path: Path, split: str) -> Iterator[dict]:
    if path.is_dir() and (path / "data" / f"{split}.jsonl").exists():
        yield from _github_rows(path, split)
        return
    files = parquet_files(path, f"**/{split}-*.parquet")
    yield from (row for _, row in iter_parquet_rows(files, _COLUMNS))


def load(path: Path, split: str | None, subsets: list[str] | None = None) -> Iterator[Item]:
    """MathVision items; ``subsets`` keeps only the named subjects."""
    for row in _rows(path, split or DEFAULT_SPLIT):
        if subsets and row["subject"] not in subsets:
            continue
        options = list(row["options"] or [])
        prompt = row["question"]
        if options:
            prompt += "\n" + "\n".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(options))
            prompt += "\n" + MC_INSTRUCTION
        image = image_bytes(row.get("decoded_image"))
        yield Item(id=str(row["id"]), question=row["question"], prompt=prompt,
                   images=[image] if image else [], answer=str(row["answer"]),
                   fields={"options": options},
                   categories={"subject": [row["subject"]], "level": [str(row["level"])]})


def _equal(gold: str, pred: str) -> bool:
    if not gold.strip() or not pred.strip():
        return False
    return gold.strip().lower() == pred.strip().lower() or math_verify_equal(gold, pred)


def grade(item: Item, response: str) -> Verdict:
    """Right when the span is the gold answer (or letter) or the gold option's text."""
    span = math_answer(response).rstrip(".").strip()
    options = item.fields["options"]
    letter = _LETTER.match(span)
    if options and letter:
        span = letter.group(1).upper()
    index = ord(item.answer.upper()) - 65 if len(item.answer) == 1 else -1
    gold_text = options[index] if 0 <= index < len(options) else ""
    correct = _equal(item.answer, span) or (bool(gold_text) and _equal(gold_text, span))
    return Verdict(extracted=span, correct=correct)
