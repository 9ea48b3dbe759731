"""MMMU (MMMU/MMMU on the Hugging Face hub): loader and the official parsing and matching rules.

Layout: ``<root>/<Subject>/{dev,validation,test}-*.parquet``, columns ``id`` (e.g.
``validation_Art_1``), ``question``, ``options`` (the text of a Python list), ``answer`` (a
letter, a string, or the text of a Python list of accepted answers), ``question_type``
(``multiple-choice`` or ``open``) and ``image_1`` .. ``image_7`` (``{bytes, path}`` structs,
referenced as ``<image N>`` in the question and options). ``path`` may be the root, one subject
folder or one parquet file; ``subsets`` keeps only the named subjects.

Scoring follows MMMU's ``mmmu/utils/eval_utils.py`` rule for rule (re-implemented, not copied):
multiple choice looks for ``(X)``, then `` X ``, then (responses over five words) option text,
the last mention winning; open answers keep the tail after key phrases (``is``, ``so``,
``therefore``, ... and ``=`` in the last line) plus every number in it, numbers rounded to two
decimals, and count as right when a number equals a gold number or a gold string is a
*substring* of a candidate (the lenient open-answer rule). One departure: where the official
parser finds no option at all it picks a random letter (seeded); here that response is wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from r1vflow.eval.benchmarks.common import (
    BenchmarkDataError,
    Item,
    Verdict,
    answer_span,
    image_bytes,
    iter_parquet_rows,
    parquet_files,
    python_list,
)

DEFAULT_SPLIT = "validation"
SPLITS = ("dev", "validation", "test")
MAX_IMAGES = 7
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."
_COLUMNS = ["id", "question", "options", "answer", "question_type"]


def subject_of(item_id: str) -> str:
    """``validation_Art_Theory_12`` -> ``Art_Theory`` (the official grouping by id)."""
    return "_".join(item_id.split("_")[1:-1])


def _files(path: Path, split: str) -> list[Path]:
    if split not in SPLITS:
        raise BenchmarkDataError(f"mmmu: split {split!r} is not one of {list(SPLITS)}")
    return parquet_files(path, f"{split}-*.parquet", f"*/{split}-*.parquet", missing=(
        f"no <Subject>/{split}-*.parquet here; point mmmu at the MMMU/MMMU folder, a subject "
        "folder or one parquet file"))


def prompt_of(question: str, options: list[str], question_type: str) -> str:
    """The official prompt: question, ``(A) option`` lines, instruction (llava config)."""
    if question_type == "multiple-choice":
        lines = "".join(f"({chr(65 + i)}) {opt}\n" for i, opt in enumerate(options))
        return f"{question}\n\n{lines}\n{MC_INSTRUCTION}"
    return f"{question}\n\n{OPEN_INSTRUCTION}"


def load(path: Path, split: str | None, subsets: list[str] | None = None) -> Iterator[Item]:
    """MMMU items of one split (validation by default), subjects filtered by ``subsets``."""
    files = _files(path, split or DEFAULT_SPLIT)
    for file, row in iter_parquet_rows(files, _COLUMNS):
        subject = subject_of(row["id"])
        if subsets and subject not in subsets:
            continue
        try:
            options = python_list(row["options"])
            answer = row["answer"]
            answer = python_list(answer) if answer.strip().startswith("[") else answer
        except (ValueError, SyntaxError) as err:
            raise BenchmarkDataError(f"{file}: item {row['id']}: {err}") from None
        images = [image_bytes(row.get(f"image_{n}")) for n in range(1, MAX_IMAGES + 1)]
        yield Item(
            id=row["id"], question=row["question"],
            prompt=prompt_of(row["question"], options, row["question_type"]),
            images=[b for b in images if b is not None], answer=answer,
            fields={"options": options, "question_type": row["question_type"]},
            categories={"subject": [subject]})


# ------------------------------------------------------------------ multiple choice
def parse_choice(response: str, letters: list[str], option_text: dict[str, str]) -> str | None:
    """The chosen letter, or None when nothing in the response names an option."""
    for char in ",.!?;:'":  # stripped one after the other, as the official parser does
        response = response.strip(char)
    padded = f" {response} "
    found = [x for x in letters if f"({x})" in padded]
    marker = "({})"
    if not found:
        found, marker = [x for x in letters if f" {x} " in padded], " {} "
    by_text = False
    if not found and len(padded.split()) > 5:
        found = [x for x in letters if option_text[x].lower() in padded.lower()]
        by_text = True
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    if by_text:
        positions = [padded.lower().rfind(option_text[x].lower()) for x in found]
    else:
        positions = [padded.rfind(marker.format(x)) for x in found]
    return found[positions.index(max(positions))]  # the last mention; ties: the first letter


# ------------------------------------------------------------------ open answers
_KEY_PHRASES = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
# The official patterns (extract_numbers), each with `(?<!\d)` before the digits a match starts
# with: the same findall results (a match never starts inside a run of digits: from the run's
# first digit the same match exists, and no match ends inside a run), but each run is scanned
# from its start only, so the time is linear (the official ones retry from every digit of a
# run that leads to no match: 80,000 digits took 125 s; tests/test_benchmarks.py compares both).
_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCI = re.compile(r"-?(?<!\d)\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:(?<!\d)\d+\.\d+|\.\d+|(?<!\d)\d+\b)(?![eE][+-]?\d+)(?![,\d])")


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def normalize(text: str) -> list[str | float]:
    """A number rounded to 2 decimals, else the lower-cased string (one character padded with
    a space on either side, so that it only matches a whole word)."""
    text = text.strip()
    number = _as_number(text)
    if number is not None:
        return [round(number, 2)]
    text = text.lower()
    return [f" {text}", f"{text} "] if len(text) == 1 else [text]


def _key_tails(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    # The official split also cuts at ". " before a capital, which never fires after lower().
    lines = response.split("\n")
    tails = []
    for index, line in enumerate(lines):
        phrases = _KEY_PHRASES + (("=",) if index == len(lines) - 1 else ())
        shortest: str | None = None
        for phrase in phrases:
            if phrase in line:
                tail = line.split(phrase)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in {":", ",", ".", "!", "?", ";", "'"}:
            tails.append(shortest)
    return tails or [response]


def parse_open(response: str) -> list[str | float]:
    """Candidate answers of an open response: key tails and the numbers in them, normalised."""
    tails = _key_tails(response)
    candidates = list(tails)
    for tail in tails:
        candidates += (_NUM_COMMAS.findall(tail) + _NUM_SCI.findall(tail)
                       + _NUM_SIMPLE.findall(tail))
    out: list[str | float] = []
    for candidate in candidates:
        out += normalize(candidate)
    return list(dict.fromkeys(out))


def open_correct(gold: str | list[str], candidates: list[str | float]) -> bool:
    """A candidate number equals a gold number, or a gold string is inside a candidate string."""
    golds = [g for answer in ([gold] if isinstance(gold, str) else gold) for g in normalize(answer)]
    for cand in candidates:
        if isinstance(cand, str):
            if any(isinstance(g, str) and g in cand for g in golds):
                return True
        elif cand in golds:
            return True
    return False


def grade(item: Item, response: str) -> Verdict:
    """Official MMMU verdict on the response's answer span."""
    span = answer_span(response)
    if item.fields["question_type"] == "multiple-choice":
        options = item.fields["options"]
        letters = [chr(65 + i) for i in range(len(options))]
        letter = parse_choice(span, letters, dict(zip(letters, options, strict=True)))
        golds = item.answer if isinstance(item.answer, list) else [item.answer]
        return Verdict(extracted=letter, correct=letter is not None and letter in golds)
    candidates = parse_open(span)
    return Verdict(extracted=json.dumps([str(c) for c in candidates]),
                   correct=open_correct(item.answer, candidates))
