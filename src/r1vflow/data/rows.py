"""One row of a user's data set -> a validated, typed row (pure functions; files are read only
by `decode_images`, through r1vflow.data.files).

A raw row is a mapping from column names to JSON / Arrow values; `parse_row` maps it through
the column names of `data.source.columns` and raises `RowError(reason)` for anything a stage
could not use: a missing or empty question or answer, a value of the wrong type, an option
letter without options, response tags where plain text belongs, a half preference pair. The
caller adds the ``file:row`` location. Images are only *referenced* here (bytes or a path);
decoding happens in `decode_images`.

Answer kinds (`answer_kind`): ``choice`` (a letter of the row's options; an answer equal to an
option's text becomes its letter), ``number`` (``12``, ``-3.5``, ``1,000``, ``45%``),
``latex`` (backslashes, ``^``, ``_``, ``$`` or braces: ``\\frac{1}{2}``), ``text`` otherwise.
"""

from __future__ import annotations

import ast
import hashlib
import io
import re
import string
import unicodedata
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from PIL import Image

from r1vflow.data.schema import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    RESPONSE_TAGS,
    THINK_CLOSE,
    THINK_OPEN,
    format_response,
)

AnswerKind = Literal["choice", "number", "latex", "text"]
LETTERS = string.ascii_uppercase
_NUMBER = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?([eE][+-]?\d+)?%?$")
_LATEX = re.compile(r"[\\^_${}]")
_LETTER = re.compile(r"^\(?([A-Za-z])[).]?$")
_PLACEHOLDER = re.compile(r"<image\s*\d*>")


class RowError(ValueError):
    """A row that cannot be used; the message is the reason, without the location."""


@dataclass(frozen=True)
class ImageRef:
    """An image of a row: its encoded bytes, or a file path (absolute, or relative to the
    data file's folder, already joined)."""

    data: bytes | None = None
    path: Path | None = None

    def describe(self) -> str:
        return str(self.path) if self.data is None else f"<{len(self.data)} bytes>"


class ReadPolicy(Protocol):
    """How `decode_images` reads files and checks sizes: r1vflow.data.files.FilePolicy."""

    max_pixels: int

    def read(self, path: Path) -> bytes: ...
    def check_bytes(self, data: bytes, what: str) -> bytes: ...
    def vague(self, path: Path | None) -> RowError | None: ...


@dataclass(frozen=True)
class ParsedRow:
    """A row every stage can use; `question` already lists the options of a choice question."""

    id: str | None
    question: str
    answer: str
    answer_kind: AnswerKind
    reasoning: str | None  # None: the row has no solution
    images: tuple[ImageRef, ...]
    choices: tuple[str, ...] | None = None
    caption: str | None = None
    chosen: str | None = None
    rejected: str | None = None


def _present(raw: Mapping[str, Any], column: str) -> bool:
    value = raw.get(column)
    return value is not None and not (isinstance(value, str) and not value.strip())


def _text(raw: Mapping[str, Any], column: str, what: str) -> str:
    value = raw.get(column)
    if value is None:
        raise RowError(f"missing {what} (column {column!r})")
    if not isinstance(value, str):
        raise RowError(f"{what} (column {column!r}) must be text, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"empty {what} (column {column!r})")
    return value.strip()


def _no_tags(text: str, what: str) -> str:
    found = [tag for tag in RESPONSE_TAGS if tag in text]
    if found:
        raise RowError(f"{what} contains response tags {found}; store plain text")
    return text


def answer_text(value: Any, column: str = "answer") -> str:
    """The gold answer as text: strings stripped, integers and floats printed; anything else
    (lists, booleans, structs) is a `RowError`."""
    if value is None:
        raise RowError(f"missing answer (column {column!r})")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RowError(f"answer (column {column!r}) must be text or a number, got "
                       f"{type(value).__name__}")
    text = (str(int(value)) if isinstance(value, float) and value.is_integer()
            else str(value)).strip()
    if not text:
        raise RowError(f"empty answer (column {column!r})")
    return _no_tags(text, "answer")


def parse_choices(value: Any) -> tuple[str, ...] | None:
    """Options as a tuple of strings: from a list, or from the text of a Python list (how MMMU
    stores them); None when absent; an empty or malformed list is a `RowError`."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise RowError(f"choices is text but not a list literal: {value[:60]!r}") from None
    if not isinstance(value, list | tuple) or not value:
        raise RowError("choices must be a non-empty list of option texts")
    if len(value) > len(LETTERS):
        raise RowError(f"choices has {len(value)} options; at most {len(LETTERS)} are lettered")
    if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value):
        raise RowError("choices must hold text or numbers only")
    return tuple(str(v).strip() for v in value)


def answer_kind(answer: str, choices: tuple[str, ...] | None) -> tuple[str, AnswerKind]:
    """(answer, kind): with options the answer must be a letter among them or one option's text
    (returned as its letter); otherwise number, latex or text by its form."""
    if choices is not None:
        letter = _LETTER.match(answer)
        if letter and LETTERS.index(letter.group(1).upper()) < len(choices):
            return letter.group(1).upper(), "choice"
        folded = [c.casefold() for c in choices]
        if answer.casefold() in folded:
            return LETTERS[folded.index(answer.casefold())], "choice"
        raise RowError(f"answer {answer!r} is neither an option letter "
                       f"A-{LETTERS[len(choices) - 1]} nor the text of one of the "
                       f"{len(choices)} options")
    if _NUMBER.match(answer) and any(ch.isdigit() for ch in answer):
        return answer, "number"
    if _LATEX.search(answer):
        return answer, "latex"
    return answer, "text"


def with_options(question: str, choices: tuple[str, ...]) -> str:
    """The question followed by its lettered options, one per line."""
    lines = [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices)]
    return question + "\nOptions:\n" + "\n".join(lines)


def solution_reasoning(text: str) -> str:
    """The plain reasoning of a solution: the text itself, or the inside of its ``<think>``
    block when the solution is a whole R1-style response (``<think>..</think>`` optionally
    followed by ``<answer>..</answer>``)."""
    if not any(tag in text for tag in RESPONSE_TAGS):
        return text
    m = re.fullmatch(rf"\s*{THINK_OPEN}(.*?){THINK_CLOSE}\s*({ANSWER_OPEN}.*?{ANSWER_CLOSE})?\s*",
                     text, re.DOTALL)
    if not m or any(tag in m.group(1) for tag in RESPONSE_TAGS):
        raise RowError("solution has response tags but is not '<think>...</think>' optionally "
                       "followed by '<answer>...</answer>'; store the plain reasoning")
    return m.group(1).strip()


def image_refs(value: Any, base_dir: Path | None, column: str) -> list[ImageRef]:
    """The images of one cell: a path, a {bytes, path} struct, raw bytes, or a list of these.
    Relative paths are joined to `base_dir` (the data file's folder)."""
    items = value if isinstance(value, list | tuple) else [value]
    refs = []
    for k, item in enumerate(items, start=1):
        where = f"image {k} (column {column!r})" if len(items) > 1 else f"image (column {column!r})"
        if isinstance(item, dict):
            data, path = item.get("bytes"), item.get("path")
            if data is not None and not isinstance(data, bytes | bytearray):
                raise RowError(f"{where}: the struct's 'bytes' is {type(data).__name__}, "
                               "expected binary data")
            if data:
                refs.append(ImageRef(data=bytes(data)))
                continue
            item = path
        if isinstance(item, bytes | bytearray) and item:
            refs.append(ImageRef(data=bytes(item)))
        elif isinstance(item, str) and item.strip():
            path = Path(item.strip())
            if not path.is_absolute():
                if base_dir is None:
                    raise RowError(f"{where}: relative path {item!r} but the data has no folder "
                                   "to resolve it against; give the image bytes")
                path = base_dir / path
            refs.append(ImageRef(path=path))
        else:
            raise RowError(f"{where}: expected a path, bytes or a {{bytes, path}} struct, got "
                           f"{type(item).__name__}")
    if not refs:
        raise RowError(f"no image (column {column!r} is an empty list)")
    return refs


def _images(raw: Mapping[str, Any], columns, base_dir: Path | None) -> list[ImageRef]:
    if _present(raw, columns.images):
        return image_refs(raw[columns.images], base_dir, columns.images)
    if _present(raw, columns.image):
        return image_refs(raw[columns.image], base_dir, columns.image)
    raise RowError(f"missing image (column {columns.image!r} or {columns.images!r})")


def _pair(raw: Mapping[str, Any], columns) -> tuple[str | None, str | None]:
    has = [_present(raw, columns.chosen), _present(raw, columns.rejected)]
    if not any(has):
        return None, None
    if not all(has):
        missing = columns.rejected if has[0] else columns.chosen
        raise RowError(f"half a preference pair: {missing!r} is missing or empty")
    chosen = _text(raw, columns.chosen, "chosen response")
    rejected = _text(raw, columns.rejected, "rejected response")
    if chosen == rejected:
        raise RowError("chosen and rejected responses are identical")
    return chosen, rejected


def parse_row(raw: Mapping[str, Any], columns, base_dir: Path | None) -> ParsedRow:
    """Validate one raw row through the column names of `columns` (a `ColumnMap`)."""
    if not isinstance(raw, Mapping):
        raise RowError(f"a row must be an object of columns, got {type(raw).__name__}")
    question = _text(raw, columns.question, "question")
    choices = parse_choices(raw.get(columns.choices))
    answer, kind = answer_kind(answer_text(raw.get(columns.answer), columns.answer), choices)
    reasoning = None
    if _present(raw, columns.solution):
        reasoning = solution_reasoning(_text(raw, columns.solution, "solution"))
    row_id = raw.get(columns.id)
    if row_id is not None and (isinstance(row_id, bool) or not isinstance(row_id, str | int)
                               or not str(row_id).strip()):
        raise RowError(f"id (column {columns.id!r}) must be non-empty text or an integer")
    caption = _text(raw, columns.caption, "caption") if _present(raw, columns.caption) else None
    chosen, rejected = _pair(raw, columns)
    return ParsedRow(
        id=None if row_id is None else str(row_id).strip(),
        question=with_options(question, choices) if choices else question,
        answer=answer, answer_kind=kind, reasoning=reasoning,
        images=tuple(_images(raw, columns, base_dir)), choices=choices,
        caption=None if caption is None else _no_tags(caption, "caption"),
        chosen=chosen, rejected=rejected)


def derived_pair(row: ParsedRow, index: int) -> tuple[str, str, str]:
    """(chosen, rejected, kind) for a row without a given pair: the reference response against
    the same reasoning with a wrong answer (integers +1, choices the next option) on even
    `index`es, or against a broken format (the answer without tags) otherwise and for answers
    with no obvious wrong value (text, LaTeX, decimals)."""
    reasoning = row.reasoning or ""
    chosen = format_response(reasoning, row.answer)
    wrong = None
    if row.answer_kind == "choice" and row.choices and len(row.choices) > 1:
        wrong = LETTERS[(LETTERS.index(row.answer) + 1) % len(row.choices)]
    elif row.answer_kind == "number" and re.fullmatch(r"[+-]?\d+", row.answer):
        wrong = str(int(row.answer) + 1)
    if wrong is not None and index % 2 == 0:
        return chosen, format_response(reasoning, wrong), "wrong_answer"
    return chosen, f"{reasoning} {row.answer}".strip(), "broken_format"


# ----------------------------------------------------------------------------- images
def decode_images(refs: Sequence[ImageRef], policy: ReadPolicy,
                  ) -> list[tuple[Image.Image, bytes, str]]:
    """(RGB image, the encoded bytes, the file extension of their format) of each of a row's
    images. Files are read under `policy` (r1vflow.data.files: place, kind, byte budget); every
    header is read and the row's pixels summed against `policy.max_pixels` before any image is
    decoded. Any failure is a `RowError`."""
    opened: list[tuple[ImageRef, bytes, Image.Image]] = []
    try:
        total = 0
        for ref in refs:
            data, image = _header(ref, policy)
            opened.append((ref, data, image))
            total += image.width * image.height
            if total > policy.max_pixels:
                raise _vague(ref, policy) or RowError(
                    f"image {ref.describe()}: {image.width}x{image.height}, the row's images "
                    f"reach {total:,} pixels, over the budget of {policy.max_pixels:,} "
                    "(data.source.max_pixels_per_row)")
        return [_decoded(ref, data, image, policy) for ref, data, image in opened]
    finally:
        for _, _, image in opened:
            image.close()


def _vague(ref: ImageRef, policy: ReadPolicy) -> RowError | None:
    return policy.vague(ref.path) if ref.data is None else None


def _header(ref: ImageRef, policy: ReadPolicy) -> tuple[bytes, Image.Image]:
    """The bytes of `ref` and PIL's image on them, with only the header read."""
    if ref.data is None:
        data = policy.read(ref.path)
    else:
        data = policy.check_bytes(ref.data, f"image {ref.describe()}")
    try:
        with warnings.catch_warnings():  # the pixel budget is ours: PIL's bomb warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return data, Image.open(io.BytesIO(data))
    except Exception as err:  # PIL raises many types for corrupt data
        raise _vague(ref, policy) or RowError(
            f"image {ref.describe()}: cannot decode ({type(err).__name__}: {err})") from None


def _decoded(ref: ImageRef, data: bytes, image: Image.Image,
             policy: ReadPolicy) -> tuple[Image.Image, bytes, str]:
    try:
        image.load()
        fmt = (image.format or "PNG").lower()
        rgb = image.convert("RGB")
    except Exception as err:  # PIL raises many types for corrupt data
        raise _vague(ref, policy) or RowError(
            f"image {ref.describe()}: cannot decode ({type(err).__name__}: {err})") from None
    return rgb, data, {"jpeg": "jpg", "mpo": "jpg"}.get(fmt, fmt)


def decode_image(ref: ImageRef, policy: ReadPolicy) -> tuple[Image.Image, bytes, str]:
    """`decode_images` of one image."""
    return decode_images([ref], policy)[0]


def pixel_hash(image: Image.Image) -> str:
    """sha256 of an RGB image's size and pixels: the same picture in PNG or lossless WebP hashes
    the same; a re-encoded JPEG (other pixels) does not."""
    rgb = image.convert("RGB")
    header = f"RGB:{rgb.size[0]}x{rgb.size[1]}:".encode()
    return hashlib.sha256(header + rgb.tobytes()).hexdigest()


def montage(images: list[Image.Image], max_height: int = 512) -> Image.Image:
    """Several images side by side at one height (the tallest, at most `max_height`), for
    models that take one image per prompt."""
    height = min(max(im.height for im in images), max_height)
    scaled = [im.resize((max(1, round(im.width * height / im.height)), height),
                        Image.Resampling.BILINEAR) for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in scaled), height))
    x = 0
    for im in scaled:
        canvas.paste(im, (x, 0))
        x += im.width
    return canvas


# ----------------------------------------------------------------------------- questions
def normalise_question(text: str) -> str:
    """Question text for matching: NFKC, case-folded, image placeholders and option lists
    removed, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).split("\nOptions:\n", 1)[0]
    text = _PLACEHOLDER.sub(" ", text.casefold())
    text = "".join(ch if ch.isalnum() else " " for ch in text)
    return " ".join(text.split())
