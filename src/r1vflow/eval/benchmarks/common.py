"""What every benchmark shares: the item and verdict types, the R1-format answer span, reading
Hugging Face parquet files with image structs, and one error type for bad data.

An `Item` holds the benchmark's own id, the question as the data set writes it, the prompt the
model is given, its images as *encoded bytes* (PNG/JPEG exactly as stored in the file, decode
with `PIL.Image.open(io.BytesIO(b))`), the gold answer and the fields its scorer needs.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "BenchmarkDataError",
    "Item",
    "MAX_PIXELS_PER_ITEM",
    "Verdict",
    "answer_phrase",
    "answer_section",
    "answer_span",
    "checked_files",
    "final_text",
    "math_answer",
    "math_verify_equal",
    "image_bytes",
    "iter_jsonl_rows",
    "iter_parquet_rows",
    "last_boxed",
    "parquet_files",
    "python_list",
    "resolve_path",
]


class BenchmarkDataError(ValueError):
    """A benchmark file or folder is missing or not in the benchmark's published layout."""


@dataclass(frozen=True)
class Item:
    """One benchmark question.

    id: the benchmark's own id (MMMU id, MathVista pid, MATH-500 unique_id, ...).
    question: the question text as stored (``<image N>`` references kept).
    prompt: the text the model is asked (question + options + the benchmark's instruction).
    images: encoded image bytes, in the order the question references them (may be empty).
    answer: the gold answer: a string, or a list of accepted strings.
    fields: what the scorer needs besides (choices, question type, precision, ...).
    categories: breakdown name -> the item's values (a list: MathVista skills are several).
    """

    id: str
    question: str
    prompt: str
    images: list[bytes]
    answer: str | list[str]
    fields: dict[str, Any] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """The scorer's view of one response: what it extracted, whether it is right, and extra
    per-response metrics (name -> correct) such as math500's ``math_verify``."""

    extracted: str | None
    correct: bool
    extra: dict[str, bool] = field(default_factory=dict)


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = "\\boxed{"


def last_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}`` in ``text`` (nested braces kept), or None."""
    start = text.rfind(_BOXED)
    while start != -1:
        depth, i = 1, start + len(_BOXED)
        while i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start + len(_BOXED):i].strip()
            i += 1
        start = text.rfind(_BOXED, 0, start)
    return None


def final_text(response: str) -> str:
    """The last ``<answer>...</answer>`` block, else the text after the last ``</think>``, else
    the whole response."""
    tagged = _ANSWER_TAG.findall(response)
    if tagged:
        return tagged[-1]
    if "</think>" in response:
        return response.rsplit("</think>", 1)[1]
    return response


def answer_span(response: str) -> str:
    """The part of an R1-format response that holds the answer, before any benchmark parser:
    `final_text`, then, if that contains a ``\\boxed{...}``, the content of the last one."""
    span = final_text(response)
    boxed = last_boxed(span)
    return (boxed if boxed is not None else span).strip()


_ANSWER_SECTION = re.compile(r"^[ \t]*# Answer[ \t]*$", re.MULTILINE)
_ANSWER_PHRASE = re.compile(r"the (?:final answer|correct answer|answer) (?:is|should be)",
                            re.IGNORECASE)


def answer_section(text: str) -> str | None:
    """What follows the last ``# Answer`` heading line (PRM800K's solution format, in which
    the MATH-500 grader's data is written: steps, then a blank line, ``# Answer``, a blank
    line and the answer), or
    None when there is no such heading."""
    headings = list(_ANSWER_SECTION.finditer(text))
    return text[headings[-1].end():].strip() if headings else None


def answer_phrase(text: str) -> str | None:
    """The answer after the last "the answer is" / "the final answer is" / "the correct answer
    is" / "the answer should be" (any case): the rest of that line up to the first ". ",
    without a final period or enclosing ``$``; None without such a phrase (MATH-V's
    phrase rule and the Minerva "The final answer is $x$. I hope it is correct." format)."""
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if not phrases:
        return None
    rest = text[phrases[-1].end():].lstrip(" :").split("\n")[0]
    rest = re.split(r"\.\s", rest)[0].strip().rstrip(".").strip()
    if len(rest) > 1 and rest[0] == "$" and rest[-1] == "$":
        rest = rest.strip("$").strip()
    return rest or None


def math_answer(response: str) -> str:
    """The final answer of a math response, in every format the official graders read:
    `final_text` (R1's ``<answer>`` tags, else after ``</think>``), then PRM800K's ``# Answer``
    section if it has one, then the content of the last ``\\boxed{}``, else the answer after
    "The answer is ..." (`answer_phrase`), else the whole text stripped. MATH-500, AIME 2024,
    OlympiadBench and MathVision grade this."""
    text = final_text(response)
    section = answer_section(text)
    text = section if section is not None else text
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    phrase = answer_phrase(text)
    return phrase if phrase is not None else text.strip()


def math_verify_equal(gold: str, text: str) -> bool:
    """math-verify's verdict: ``text`` (free text, LaTeX or ``\\boxed``) equals ``gold``."""
    import threading

    from math_verify import parse, verify

    timeout = 5 if threading.current_thread() is threading.main_thread() else None  # SIGALRM
    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
        pred_parsed = parse(text, parsing_timeout=timeout)
        return bool(gold_parsed and pred_parsed
                    and verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # sympy inside math-verify fails in many ways on junk: not equal
        return False


PACKAGE_PREFIX = "package:"


def resolve_path(path: str | Path) -> Path:
    """A benchmark path: a file or folder, or ``package:<module>/<relative path>`` for files
    installed with a Python package (the smoke preset's sample: the same path inside a
    container as on a laptop)."""
    text = str(path)
    if not text.startswith(PACKAGE_PREFIX):
        return Path(path)
    module, _, rel = text[len(PACKAGE_PREFIX):].partition("/")
    try:
        from importlib.resources import files

        return Path(str(files(module))) / rel
    except (ModuleNotFoundError, TypeError, ValueError):
        raise BenchmarkDataError(f"{text}: no installed package {module!r}") from None


def python_list(text: str | list | None) -> list[str]:
    """A list stored as the text of a Python list (MMMU options and multi-answer golds)."""
    if text is None:
        return []
    if isinstance(text, list):
        return [str(x) for x in text]
    value = ast.literal_eval(text)
    if not isinstance(value, list):
        raise ValueError(f"expected the text of a Python list, got {text[:60]!r}")
    return [str(x) for x in value]


def image_bytes(value: Any) -> bytes | None:
    """Encoded bytes of a parquet image cell: a ``{bytes, path}`` struct or raw bytes."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, dict) and value.get("bytes"):
        return bytes(value["bytes"])
    return None


# Bounds no published benchmark comes near (the largest, MathVista's test split, is one 0.8 GB
# parquet file; MATH-500's lines are a few KB), so a wrong or hostile path cannot exhaust the
# machine: per file, per JSON line, and decoded pixels per item.
MAX_FILE_BYTES = 16 << 30
MAX_LINE_BYTES = 16 << 20
MAX_PIXELS_PER_ITEM = 100_000_000


def checked_files(path: Path, files: list[Path]) -> list[Path]:
    """The files a benchmark configured at `path` reads, each inside its root once symlinks are
    followed (the data sets' place check, r1vflow.config.paths.lies_inside): the root is `path`
    when it is a folder; a path naming one file is its own root. A symlink out of the folder is
    refused without naming its target. The kind check (regular files only) is `open_checked`'s,
    when each file is opened."""
    from r1vflow.config.paths import lies_inside

    root = path if path.is_dir() else Path(os.path.realpath(path)).parent
    for file in files:
        if not lies_inside(file, root):
            raise BenchmarkDataError(f"{file}: a symlink out of the benchmark folder {root}: "
                                     "refused, not read")
    return files


def open_checked(file: Path) -> BinaryIO:
    """`file` opened if it is still a regular file within MAX_FILE_BYTES (no symlink swapped
    in since `checked_files`)."""
    from r1vflow.config.paths import open_regular

    return open_regular(Path(os.path.realpath(file)), MAX_FILE_BYTES, str(file),
                        BenchmarkDataError, "a benchmark file's size bound")


def parquet_files(path: Path, *patterns: str, missing: str | None = None) -> list[Path]:
    """``path`` itself if it is a file, else the files under it matching any of ``patterns``
    (sorted); ``missing`` is the error's text after the path when none matches. Every file is
    placed by `checked_files`."""
    if not path.exists():
        raise BenchmarkDataError(f"{path}: no such file or directory")
    if not path.is_dir():
        return checked_files(path, [path])
    found = sorted({f for pattern in patterns for f in path.glob(pattern)})
    if not found:
        raise BenchmarkDataError(f"{path}: " + (missing or f"no file matches {patterns[0]!r} (is "
                                                "this the published layout of the benchmark?)"))
    return checked_files(path, found)


def iter_parquet_rows(files: list[Path], columns: list[str]) -> Iterator[tuple[Path, dict]]:
    """(file, row as a dict) for every row, reading one record batch at a time."""
    import pyarrow.parquet as pq

    for file in files:
        with open_checked(file) as handle:
            try:
                table = pq.ParquetFile(handle)
            except Exception as err:  # pyarrow's many errors on a file that is not parquet
                raise BenchmarkDataError(f"{file}: not a readable parquet file "
                                         f"({' '.join(str(err).split())[:200]})") from None
            missing = [c for c in columns if c not in table.schema_arrow.names]
            if missing:
                raise BenchmarkDataError(f"{file}: missing column(s) {missing}; found "
                                         f"{table.schema_arrow.names}")
            for batch in table.iter_batches(batch_size=64):
                yield from ((file, row) for row in batch.to_pylist())


def iter_jsonl_rows(path: Path, name: str, columns: list[str]) -> Iterator[tuple[str, dict]]:
    """(``file:line``, row) for every line of ``path`` (a file) or ``path/name``."""
    import json

    if not path.exists():
        raise BenchmarkDataError(f"{path}: no such file or directory")
    file = path / name if path.is_dir() else path
    if not os.path.lexists(file):
        raise BenchmarkDataError(f"{path}: no {name} here (is this the published layout?)")
    checked_files(path, [file])
    with open_checked(file) as handle:
        number = 0
        while raw := handle.readline(MAX_LINE_BYTES + 1):
            number += 1
            where = f"{file}:{number}"
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise BenchmarkDataError(f"{where}: a line over {MAX_LINE_BYTES:,} bytes")
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise BenchmarkDataError(f"{where}: not UTF-8 text") from None
            except json.JSONDecodeError as err:
                raise BenchmarkDataError(f"{where}: not JSON ({err.msg})") from None
            except RecursionError:
                raise BenchmarkDataError(f"{where}: JSON nested too deep") from None
            if not isinstance(row, dict):
                raise BenchmarkDataError(f"{where}: not a JSON object")
            missing = [c for c in columns if c not in row]
            if missing:
                raise BenchmarkDataError(f"{where}: missing field(s) {missing}")
            yield where, row
