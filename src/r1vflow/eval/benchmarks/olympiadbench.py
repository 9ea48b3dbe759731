"""OlympiadBench (Hothan/OlympiadBench): the open-ended (OE) subsets, loader and answer judge.

Layout: one folder per subset named ``{OE,TP}_{MM,TO}_{maths,physics}_{en,zh}_{COMP,CEE}``
holding its parquet file(s) (``<subset>/train/0000.parquet`` or ``<subset>/*.parquet``);
``path`` may be the root, a subset folder or one file. Columns ``id``, ``question``,
``final_answer`` (a list of strings), ``is_multiple_answer``, ``unit``, ``answer_type``,
``error`` (the numeric tolerance, e.g. ``1e-2``, or null), ``subfield`` and ``image_1`` ..
``image_5`` (``{bytes, path}`` structs; MM subsets). Theorem-proving (TP) subsets have no final
answer to check and are skipped. ``subsets`` keeps only the named subsets.

Scoring follows the official ``eval/auto_scoring_judge.py`` order: the final answer (`common.math_answer`) and each gold
answer are split at top-level commas and every gold element must pair with a predicted one;
two elements are equal when their strings match, when both are numbers within the item's
tolerance (default 1e-8, absolute; 1/100 and 100x the gold value also accepted as the
official judge does for percentages), or when math-verify finds them equivalent (the official
judge uses its own latex2sympy comparison: departure). Breakdowns by subset and subfield.
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
    iter_parquet_rows,
    math_answer,
    math_verify_equal,
)

DEFAULT_SPLIT = "train"
MAX_IMAGES = 5
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_SUBSET = re.compile(r"^(OE|TP)_(MM|TO)_(maths|physics)_(en|zh)_(COMP|CEE)")


def _subset_of(file: Path) -> str | None:
    for part in (file.stem, *(p.name for p in file.parents)):
        m = _SUBSET.match(part)
        if m:
            return m.group(0)
    return None


def _files(path: Path, subsets: list[str] | None) -> list[tuple[str, Path]]:
    if not path.exists():
        raise BenchmarkDataError(f"{path}: no such file or directory")
    candidates = [path] if not path.is_dir() else sorted(path.rglob("*.parquet"))
    found = [(s, f) for f in candidates if (s := _subset_of(f)) and s.startswith("OE_")
             and (not subsets or s in subsets)]
    if not found:
        raise BenchmarkDataError(f"{path}: no OE_* subset parquet file here (folders named like "
                                 "OE_MM_maths_en_COMP); TP subsets are not scored")
    checked_files(path, [f for _, f in found])
    return found


def load(path: Path, split: str | None, subsets: list[str] | None = None) -> Iterator[Item]:
    """OlympiadBench open-ended items of every (or the named) OE subset."""
    for subset, file in _files(path, subsets):
        for _, row in iter_parquet_rows([file], ["id", "question", "final_answer"]):
            golds = row["final_answer"]
            golds = [golds] if isinstance(golds, str) else list(golds or [])
            images = [image_bytes(row.get(f"image_{n}")) for n in range(1, MAX_IMAGES + 1)]
            unit = f" (unit: {row['unit']})" if row.get("unit") else ""
            context = f"{row['context']}\n\n" if row.get("context") else ""
            yield Item(
                id=str(row["id"]), question=row["question"],
                prompt=f"{context}{row['question']}{unit}\n\n{INSTRUCTION}",
                images=[b for b in images if b is not None], answer=golds,
                fields={"error": row.get("error")},
                categories={"subset": [subset], "subfield": [row.get("subfield") or "unknown"]})


def split_top_level(text: str) -> list[str]:
    """``a, (1,2), b`` -> ["a", "(1,2)", "b"]: commas inside brackets do not split."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char in "([{") - (char in ")]}")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [p for p in [*parts, current.strip()] if p]


def _clean(text: str) -> str:
    return text.strip().strip("$").replace(" ", "").rstrip(".")


def _number(text: str) -> float | None:
    try:
        return float(_clean(text).replace(",", "").replace("\\%", "").replace("%", ""))
    except ValueError:
        return None


def elements_equal(gold: str, pred: str, tolerance: float) -> bool:
    """One gold element against one predicted element."""
    if _clean(gold) == _clean(pred) and _clean(gold):
        return True
    g, p = _number(gold), _number(pred)
    if g is not None and p is not None:
        return any(abs(v - p) <= tolerance * 1.01 for v in (g / 100, g, g * 100))
    return math_verify_equal(gold.strip().strip("$"), f"${pred.strip().strip('$')}$")


def _tolerance(error: str | None) -> float:
    try:
        return float(str(error).split(",")[0]) if error else 1e-8
    except ValueError:
        return 1e-8


def grade(item: Item, response: str) -> Verdict:
    """Every gold element pairs with a distinct predicted element."""
    span = math_answer(response)
    preds = split_top_level(span)
    golds = [g for answer in item.answer for g in split_top_level(answer)]
    tolerance = _tolerance(item.fields["error"])
    if not golds or len(preds) != len(golds):
        return Verdict(extracted=span, correct=False)
    remaining = list(preds)
    for gold in golds:
        match = next((p for p in remaining if elements_equal(gold, p, tolerance)), None)
        if match is None:
            return Verdict(extracted=span, correct=False)
        remaining.remove(match)
    return Verdict(extracted=span, correct=True)
