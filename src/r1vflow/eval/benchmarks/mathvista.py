"""MathVista (AI4Math/MathVista): loader, rule-based answer extraction and the official
normalisation and equality.

Layout: ``data/testmini-*.parquet`` (the file, or its folder or the data set root), columns
``pid``, ``question``, ``query`` (the official prompt with its hint), ``decoded_image`` (a
``{bytes, path}`` struct), ``choices`` (list or null), ``precision``, ``answer``,
``question_type`` (``multi_choice`` / ``free_form``), ``answer_type`` (``text``, ``integer``,
``float``, ``list``) and ``metadata`` (a struct with ``task`` and ``skills``).

Scoring, after taking the R1 answer span:
1. extraction: the official quick rules (the span is one of the choices; it parses as the
   integer / float the answer type asks for; ``The answer is "X".``), then rules of our own
   where the official code asks GPT-4 (a choice letter, an option's text, the last number with
   thousands separators and units dropped); an OpenAI-compatible judge can take that step
   instead (`JudgeConfig`, off by default);
2. the official ``normalize_extracted_answer``: a letter maps to its choice, other text to the
   most similar choice by edit distance, integers through ``int(float(x))``, floats rounded to
   the item's precision;
3. the official ``safe_equal``: string equality with the gold answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from r1vflow.eval.benchmarks.common import (
    Item,
    Verdict,
    answer_span,
    image_bytes,
    iter_parquet_rows,
    parquet_files,
)
from r1vflow.eval.benchmarks.judge import JudgeConfig, judge_extract

DEFAULT_SPLIT = "testmini"
_COLUMNS = ["pid", "question", "query", "choices", "precision", "answer", "question_type",
            "answer_type", "metadata"]
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_QUOTED = re.compile(r'The answer is "(.*)"\.')
_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.:]?$|^\(([A-Za-z])\)")
_NAMED_LETTER = re.compile(r"\b(?i:answer|option|choice)(?:\s+is)?\s*:?\s*\(?([A-Z])\)?(?!\w)")


def _files(path: Path, split: str) -> list[Path]:
    return parquet_files(path, f"{split}-*.parquet", f"data/{split}-*.parquet", missing=(
        f"no data/{split}-*.parquet here; point mathvista at the AI4Math/MathVista folder, its "
        "data folder or the file"))


def load(path: Path, split: str | None, subsets: list[str] | None = None) -> Iterator[Item]:
    """MathVista items (testmini by default); ``subsets`` keeps only the named tasks."""
    files = _files(path, split or DEFAULT_SPLIT)
    for _, row in iter_parquet_rows(files, _COLUMNS):
        meta = row["metadata"] or {}
        task = meta.get("task") or "unknown"
        if subsets and task not in subsets:
            continue
        image = image_bytes(row.get("decoded_image"))
        yield Item(
            id=str(row["pid"]), question=row["question"], prompt=row["query"],
            images=[image] if image else [], answer=str(row["answer"]),
            fields={"choices": row["choices"], "question_type": row["question_type"],
                    "answer_type": row["answer_type"], "precision": row["precision"],
                    "query": row["query"]},
            categories={"task": [task], "skill": list(meta.get("skills") or [])})


# ------------------------------------------------------------------ extraction
def quick_extract(span: str, fields: dict) -> str | None:
    """The official rules that need no model, or None when none applies."""
    if span == "":
        return ""
    if fields["question_type"] == "multi_choice" and span in (fields["choices"] or []):
        return span
    for kind, cast in (("integer", lambda s: str(int(s))), ("float", lambda s: str(float(s)))):
        if fields["answer_type"] == kind:
            try:
                return cast(span)
            except ValueError:
                pass
    quoted = _QUOTED.search(span)
    return quoted.group(1) if quoted else None


def rule_extract(span: str, fields: dict) -> str:
    """Our rules where the official code asks a model. Multiple choice: the span is a letter
    (``C``, ``(C)``, ``C.``), else the last "answer/option/choice (is) C", else the choice
    whose text (as a whole word) is mentioned last. Integer and float answers: the last number
    (thousands separators dropped). Otherwise, or when nothing matches: the span itself."""
    if fields["question_type"] == "multi_choice":
        letter = _LETTER.match(span.strip())
        if letter:
            return (letter.group(1) or letter.group(2)).upper()
        named = _NAMED_LETTER.findall(span)
        if named:
            return named[-1].upper()
        mentioned = [(m.start(), str(c)) for c in fields["choices"] or []
                     for m in re.finditer(rf"(?<!\w){re.escape(str(c))}(?!\w)", span, re.I)]
        return max(mentioned)[1] if mentioned else span
    if fields["answer_type"] in ("integer", "float"):
        numbers = _NUMBER.findall(span)
        return numbers[-1].replace(",", "") if numbers else span
    return span


# ------------------------------------------------------------------ official normalisation
def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalize(extraction: str, fields: dict) -> str | None:
    """The official ``normalize_extracted_answer`` (empty extractions not ignored)."""
    if fields["question_type"] == "multi_choice":
        choices = [str(c) for c in fields["choices"] or []]
        extraction = str(extraction).strip()
        bracketed = re.findall(r"\(([a-zA-Z])\)", extraction)
        if bracketed:
            extraction = bracketed[0].upper()
        letters = [chr(65 + i) for i in range(len(choices))]
        if extraction in letters:
            return choices[letters.index(extraction)]
        distances = [edit_distance(extraction, c) for c in choices]
        return choices[distances.index(min(distances))]
    try:
        if fields["answer_type"] == "integer":
            return str(int(float(extraction)))
        if fields["answer_type"] == "float":
            return str(round(float(extraction), int(fields["precision"])))
    except (ValueError, TypeError, OverflowError):
        return None
    return str(extraction)  # text and list answers compare as their strings


def grade(item: Item, response: str, judge: JudgeConfig | None = None) -> Verdict:
    """Official MathVista verdict: extract (rules, or the judge), normalise, compare."""
    span = answer_span(response)
    extraction = quick_extract(span, item.fields)
    if extraction is None:
        extraction = (judge_extract(judge, item.fields["query"], response) if judge
                      else rule_extract(span, item.fields))
    prediction = normalize(extraction, item.fields)
    return Verdict(extracted=prediction, correct=prediction == item.answer)
