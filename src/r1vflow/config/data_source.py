"""Where the data set comes from (`data.source`) and the contamination check
(`data.contamination`): sections of `DataConfig`. docs/data.md describes formats and columns."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from r1vflow.config.base import Seed, Strict

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
MAX_IMAGE_BYTES = 32 << 20  # 32 MiB: several times a 12 MP camera JPEG (3 to 6 MB)
MAX_PIXELS_PER_ROW = 40_000_000  # 40 MP: 120 MB decoded RGB; 2.5x a 4096x4096 image


class ColumnMap(Strict):
    """Column names in the user's files. A file whose columns carry these default names needs no
    mapping; a column named here that a file lacks counts as absent (optional) or missing
    (required: question, answer and one of image/images)."""

    id: str = Field("id", description="Row id (optional; default <split>-<n>). Splits are "
                                      "checked for shared ids.")
    image: str = Field("image", description="One image: a path relative to the file, or a "
                                            "{bytes, path} struct (Hugging Face Image column).")
    images: str = Field("images", description="Several images: a list of paths or structs.")
    question: str = Field("question", description="The question (required).")
    answer: str = Field("answer", description="The gold answer: number, choice letter (or the "
                                              "chosen option's text), free text or LaTeX.")
    solution: str = Field("solution", description="Reference reasoning chain (optional); SFT "
                                                  "targets need it unless "
                                                  "data.source.answer_only_sft.")
    choices: str = Field("choices", description="Options of a multiple-choice question: a list "
                                                "or the text of a Python list (optional).")
    caption: str = Field("caption", description="Image description for align_projector's "
                                                "captions data (optional).")
    chosen: str = Field("chosen", description="Preferred response of a preference pair, for "
                                              "train_reward_model (optional).")
    rejected: str = Field("rejected", description="Dispreferred response of the pair "
                                                  "(optional).")


class HubSource(Strict):
    """A data set on a hub, loaded with `datasets.load_dataset` in streaming mode (cluster only:
    the development machines reach no hub)."""

    id: str = Field(min_length=1, description="Data set id, e.g. 'lmms-lab/multimodal-open-r1-8k"
                                              "-verified', or a local folder in a hub layout.")
    revision: str = Field(description="Pinned commit (40 hex digits): the same run always reads "
                                      "the same rows.")
    name: str | None = Field(None, description="The data set's configuration (subset), if any.")

    @model_validator(mode="after")
    def _pinned(self) -> HubSource:
        if not _COMMIT.match(self.revision):
            raise ValueError(f"data.source.hub.revision must be a commit sha (40 hex digits) so "
                             f"the data cannot change under a run, got {self.revision!r}; copy "
                             "it from the data set's 'Files and versions' history")
        return self


class DataSourceConfig(Strict):
    """`synthetic`: the procedural families (synthesize_data's counts). `files`: a JSONL or
    Parquet file, or a folder of them (split from file names). `hub`: a data set id + commit."""

    kind: Literal["synthetic", "files", "hub"] = Field(
        "synthetic", description="Where samples come from (docs/data.md).")
    path: str | None = Field(None, description="files: a .jsonl/.json/.parquet file or a folder "
                                               "of them.")
    hub: HubSource | None = Field(None, description="hub: the data set id and its revision.")
    columns: ColumnMap = Field(default_factory=ColumnMap)
    splits: dict[Literal["train", "val", "test"], str] = Field(
        default_factory=dict,
        description="Published split names to use, e.g. {val: validation}; default: "
                    "train/val|validation|dev/test by file name (files) or split name (hub).")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of train carved out as val "
                                                            "when no val split is published.")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="Share of train carved out as test "
                                                             "when no test split is published.")
    seed: Seed = Field(0, description="Seed of the carving (a hash of seed and row id).")
    max_rows: int | None = Field(None, gt=0, description="Read at most this many rows of each "
                                                         "file (each split of a hub data set): "
                                                         "quick runs.")
    files_signature: str | None = Field(
        None, description="Set by `r1vflow run`: sha256 of the data files' names, sizes and "
                          "modification times, so a changed file changes the fingerprint and "
                          "KFP's cache key (images referenced by path are not covered).")
    derive_pairs: bool = Field(
        False, description="Without chosen/rejected columns, derive one preference pair per row "
                           "for train_reward_model: the reference response against a wrong "
                           "answer or a broken format (docs/data.md).")
    answer_only_sft: bool = Field(
        False, description="Without a solution column, train SFT on '<think></think><answer>"
                           "A</answer>' (no reasoning to imitate); off: validation refuses.")
    allow_absolute_paths: bool = Field(
        False, description="Read image files anywhere: absolute paths, ../ and symlinks out of "
                           "the data folder (off: only files inside the folder of "
                           "data.source.path; docs/reliability.md).")
    max_image_bytes: int = Field(
        MAX_IMAGE_BYTES, gt=0, le=1 << 30,
        description="Largest image file or image bytes in a row; larger ones are bad rows.")
    max_pixels_per_row: int = Field(
        MAX_PIXELS_PER_ROW, gt=0, le=1_000_000_000,
        description="Most pixels (width x height, from the headers, summed over a row's "
                    "images) decoded for one row; more is a bad row, refused before decoding.")
    @model_validator(mode="after")
    def _kind_fields(self) -> DataSourceConfig:
        if self.kind == "files" and not self.path:
            raise ValueError("data.source.kind 'files' needs data.source.path (a .jsonl or "
                             ".parquet file, or a folder of them)")
        if self.kind == "hub" and self.hub is None:
            raise ValueError("data.source.kind 'hub' needs data.source.hub.id and .revision")
        if self.kind != "files" and self.path:
            raise ValueError(f"data.source.path is only read by kind 'files' (kind is "
                             f"{self.kind!r}): remove it or set kind: files")
        if self.kind != "hub" and self.hub is not None:
            raise ValueError(f"data.source.hub is only read by kind 'hub' (kind is "
                             f"{self.kind!r}): remove it or set kind: hub")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"data.source.val_fraction + test_fraction must leave some train "
                             f"data, got {self.val_fraction} + {self.test_fraction}")
        return self


class ContaminationReference(Strict):
    """An evaluation set whose questions and images training must not contain."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Label in metrics and report.")
    kind: Literal["files", "benchmark"] = Field(
        "files", description="files: JSONL/Parquet read like data.source files; benchmark: "
                             "r1vflow.eval.benchmarks.iter_items(name, path, split).")
    path: str = Field(min_length=1, description="File or folder of the evaluation set.")
    split: str | None = Field(None, description="Only this split (file-name or benchmark "
                                                "split); default all.")
    columns: ColumnMap = Field(default_factory=ColumnMap,
                               description="files: where question and images are.")
    limit: int | None = Field(None, gt=0, description="Read at most this many items.")


class ContaminationConfig(Strict):
    """Training samples that share an image (pixel hash) or a normalised question with any
    reference are counted; `action` fails the import or drops them."""

    references: list[ContaminationReference] = Field(
        default_factory=list, description="Evaluation sets to check against; empty: no check.")
    action: Literal["fail", "drop"] = Field("fail", description="On a match: stop, or leave "
                                                                 "the sample out of train.")
    min_question_chars: int = Field(
        20, ge=1, description="Normalised questions shorter than this never match on text "
                              "alone (generic prompts like 'What is the answer?').")

    @model_validator(mode="after")
    def _unique(self) -> ContaminationConfig:
        names = [r.name for r in self.references]
        if len(set(names)) != len(names):
            raise ValueError(f"data.contamination.references: names must be unique, got {names}")
        return self
