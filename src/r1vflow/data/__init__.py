"""Data layer: record schemas, procedural task synthesis, data set I/O, bootstrap corpora.

The data set layout and the task families are described in `r1vflow.data.synth`.
"""

from r1vflow.data.families import FAMILIES, Task, comparison, counting, digit_arithmetic
from r1vflow.data.io import (
    dataset_digest,
    images_to_tensor,
    load_captions,
    load_image,
    load_preferences,
    load_split,
    read_info,
)
from r1vflow.data.schema import (
    PREFERENCE_KINDS,
    SPLITS,
    CaptionSample,
    DatasetInfo,
    PreferencePair,
    Sample,
    format_response,
)
from r1vflow.data.synth import (
    ATTRIBUTE_NAMES,
    synthesize,
    text_corpus,
    tokenizer_corpus,
    vision_pretraining_set,
)

__all__ = [
    "ATTRIBUTE_NAMES",
    "FAMILIES",
    "PREFERENCE_KINDS",
    "SPLITS",
    "CaptionSample",
    "DatasetInfo",
    "PreferencePair",
    "Sample",
    "Task",
    "comparison",
    "counting",
    "dataset_digest",
    "digit_arithmetic",
    "format_response",
    "images_to_tensor",
    "load_captions",
    "load_image",
    "load_preferences",
    "load_split",
    "read_info",
    "synthesize",
    "text_corpus",
    "tokenizer_corpus",
    "vision_pretraining_set",
]
