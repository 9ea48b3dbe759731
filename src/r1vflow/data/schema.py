"""Record schemas of a synthesized (or converted) data set.

Every line of ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` is a `Sample`, every line of
``captions.jsonl`` a `CaptionSample`, every line of ``preferences.jsonl`` a `PreferencePair`;
``dataset.json`` is a `DatasetInfo`. All models forbid unknown fields so that a typo in a
hand-written row fails loudly instead of being dropped.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Split = Literal["train", "val", "test"]
# "imported": a pair given by the user's data (chosen/rejected columns), not synthesized.
PreferenceKind = Literal["wrong_answer", "miscount", "broken_format", "contradiction", "imported"]

SPLITS: tuple[Split, ...] = ("train", "val", "test")
PREFERENCE_KINDS: tuple[PreferenceKind, ...] = (
    "wrong_answer",
    "miscount",
    "broken_format",
    "contradiction",
)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
RESPONSE_TAGS: tuple[str, ...] = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def format_response(reasoning: str, answer: str) -> str:
    """The canonical R1-style response: ``<think>reasoning</think><answer>answer</answer>``."""
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


def _check_relative_image(path: str) -> str:
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\\" in path:
        raise ValueError(
            f"image must be a relative POSIX path inside the data set directory, got {path!r}"
        )
    return path


def _check_no_tags(text: str) -> str:
    found = [tag for tag in RESPONSE_TAGS if tag in text]
    if found:
        raise ValueError(f"must not contain response tags, found {found}; store the plain text")
    return text


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sample(_Record):
    """One visual question with a verifiable answer and a reference chain of thought."""

    id: str = Field(min_length=1, description="Unique id within the data set, e.g. 'train-000012'.")
    family: str = Field(min_length=1, description="Task family that produced it, e.g. 'counting'.")
    split: Split = Field(description="Which split the sample belongs to.")
    image: str = Field(description="Image path relative to the data set directory.")
    question: str = Field(min_length=1, description="The question asked about the image.")
    reasoning: str = Field(description="Step-by-step reference reasoning, plain text, no tags.")
    answer: str = Field(
        min_length=1, description="Canonical answer (a number, 'left', 'yes', ...)."
    )
    meta: dict[str, Any] = Field(
        default_factory=dict,
        description="Family-specific ground truth (the scene's objects, digits, question type); "
        "for imported rows: source location, answer kind, options.",
    )
    images: list[str] = Field(
        default_factory=list,
        exclude_if=lambda value: not value,  # absent from synthetic rows: their bytes are unchanged
        description="A sample with several images: each of them (relative paths); `image` is "
        "then their side-by-side montage, for models that take one image per prompt.",
    )

    @field_validator("image")
    @classmethod
    def _image_ok(cls, value: str) -> str:
        return _check_relative_image(value)

    @field_validator("images")
    @classmethod
    def _images_ok(cls, value: list[str]) -> list[str]:
        return [_check_relative_image(v) for v in value]

    @field_validator("reasoning", "answer")
    @classmethod
    def _text_ok(cls, value: str) -> str:
        return _check_no_tags(value)

    def response(self) -> str:
        """The target completion: ``<think>{reasoning}</think><answer>{answer}</answer>``."""
        return format_response(self.reasoning, self.answer)


class CaptionSample(_Record):
    """An image with a plain description, for projector alignment (captioning SFT)."""

    id: str = Field(min_length=1, description="Unique id within captions.jsonl.")
    split: Split = Field(description="Split of the image the caption describes.")
    image: str = Field(description="Image path relative to the data set directory.")
    caption: str = Field(min_length=1, description="Plain-text description of the image.")

    @field_validator("image")
    @classmethod
    def _image_ok(cls, value: str) -> str:
        return _check_relative_image(value)


class PreferencePair(_Record):
    """A chosen (reference) and a rejected response to the same visual question."""

    id: str = Field(min_length=1, description="Unique id within preferences.jsonl.")
    split: Split = Field(description="Split of the sample the pair was built from.")
    image: str = Field(description="Image path relative to the data set directory.")
    question: str = Field(min_length=1, description="The question asked about the image.")
    chosen: str = Field(min_length=1, description="Preferred full response, with tags.")
    rejected: str = Field(min_length=1, description="Dispreferred full response, with tags.")
    kind: PreferenceKind = Field(
        description=(
            "How the rejected response is wrong: wrong_answer (correct reasoning, wrong answer), "
            "miscount (reasoning misreads the image, answer follows it), broken_format (tags "
            "missing or misordered), contradiction (reasoning concludes otherwise than the answer)."
        )
    )
    answer: str = Field(min_length=1, description="Canonical correct answer.")

    @field_validator("image")
    @classmethod
    def _image_ok(cls, value: str) -> str:
        return _check_relative_image(value)

    @model_validator(mode="after")
    def _differs(self) -> PreferencePair:
        if self.chosen == self.rejected:
            raise ValueError(f"pair {self.id!r}: chosen and rejected responses are identical")
        return self


class DatasetInfo(_Record):
    """Contents of ``dataset.json``: what was synthesized, and the digest of every other file."""

    digest: str = Field(
        description="sha256 over sorted relative paths and bytes of all files "
        "except dataset.json (see r1vflow.data.io.dataset_digest)."
    )
    counts: dict[str, int] = Field(
        description="Rows per file: train, val, test, captions, preferences; and images."
    )
    families: list[str] = Field(description="Task families in the round-robin mix.")
    image_size: int = Field(
        gt=0,
        description="Side of every square image, in pixels (imported data: the side the stages "
        "resize images to, data.image_size).",
    )
    seed: int = Field(description="Seed the data set was synthesized from.")
    max_objects: int | None = Field(
        default=None, description="Largest object count per scene (per side for 'comparison')."
    )
    files: dict[str, str] = Field(
        default_factory=dict,
        description="Role -> path relative to the data set directory (train, val, test, ...).",
    )
    source: str | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="Imported data: where it came from (a path, or hub id@revision); "
        "absent for synthetic data.",
    )
    root: Path | None = Field(
        default=None,
        exclude=True,
        description="Directory the info was read from or written to (not stored in the file).",
    )

    def path(self, role: str) -> Path:
        """Absolute path of the file playing ``role`` ('train', 'captions', ...)."""
        if self.root is None:
            raise ValueError("DatasetInfo.root is unset; read it with r1vflow.data.io.read_info")
        if role not in self.files:
            raise KeyError(f"no file for role {role!r}; known roles: {sorted(self.files)}")
        return self.root / self.files[role]
