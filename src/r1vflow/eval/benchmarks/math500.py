"""MATH-500 (HuggingFaceH4/MATH-500): loader and PRM800K's grader, math-verify as a second metric.

Layout: ``test.jsonl`` (the file or its folder), one JSON object a line with ``problem``,
``solution``, ``answer``, ``subject``, ``level`` and ``unique_id`` (e.g.
``test/precalculus/807.json``), the item's id. Text only: no images.

Scoring: the final answer in any format the official graders read (`common.math_answer`:
R1's ``<answer>`` tags or the text after ``</think>``, PRM800K's ``# Answer`` section, the last
``\\boxed{}``, "The answer is ...") graded by `prm800k.grade_answer` against ``answer`` (the
verdict the reports' MATH-500 numbers use); ``math_verify`` is math-verify's verdict on the text
after ``</think>`` (its own extraction), reported next to it. Breakdowns by ``level`` and ``subject``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from r1vflow.eval.benchmarks.common import (
    Item,
    Verdict,
    final_text,
    iter_jsonl_rows,
    math_answer,
    math_verify_equal,
)
from r1vflow.eval.benchmarks.prm800k import grade_answer

DEFAULT_SPLIT = "test"
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_COLUMNS = ["problem", "answer", "subject", "level", "unique_id"]


def load(path: Path, split: str | None, subsets: list[str] | None = None) -> Iterator[Item]:
    """MATH-500 items; ``subsets`` keeps only the named subjects."""
    for _, row in iter_jsonl_rows(path, f"{split or DEFAULT_SPLIT}.jsonl", _COLUMNS):
        if subsets and row["subject"] not in subsets:
            continue
        yield Item(id=row["unique_id"], question=row["problem"],
                   prompt=f"{row['problem']}\n\n{INSTRUCTION}", images=[], answer=row["answer"],
                   categories={"level": [str(row["level"])], "subject": [row["subject"]]})


def grade(item: Item, response: str) -> Verdict:
    """PRM800K's verdict (``correct``) and math-verify's (``extra["math_verify"]``)."""
    span = math_answer(response)
    return Verdict(extracted=span, correct=grade_answer(span, item.answer),
                   extra={"math_verify": math_verify_equal(item.answer, final_text(response))})
