"""Data of R1V stage 1 (projector alignment): which (question, response, image) texts a
sub-stage trains on.

"captions" are the train images' descriptions, asked as "Describe the picture." (the wording
the substitute LLM was pretrained with); "cot" are the train split's step-by-step responses
(`<think>...</think><answer>...</answer>`); "all" is both. A sub-stage takes a seeded random
share of its data (`fraction`, then at most `limit` items), like the report's 200K quality
subset of the 2M set and its 40K chain-of-thought samples.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from r1vflow.data.schema import CaptionSample, Sample

CAPTION_QUESTION = "Describe the picture."
AlignText = tuple[str, str, str]  # question, response, image path (relative to the data set)


def subset(n: int, fraction: float, limit: int | None, seed: str) -> list[int]:
    """Indices of a seeded random subset of range(n): round(fraction * n) items (at least one
    when n > 0), then at most `limit`; in the shuffled order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    order = list(range(n))
    random.Random(f"r1vflow-align:{seed}").shuffle(order)
    size = max(1, round(fraction * n)) if n else 0
    return order[: size if limit is None else min(size, limit)]


def alignment_texts(
    data: Literal["captions", "cot", "all"],
    captions: Sequence[CaptionSample],
    samples: Sequence[Sample],
    fraction: float,
    limit: int | None,
    seed: str,
) -> list[AlignText]:
    """The texts of one alignment step: train-split captions and/or `samples`' responses."""
    if data not in ("captions", "cot", "all"):
        raise ValueError(f"data must be captions, cot or all, got {data!r}")
    texts: list[AlignText] = []
    if data in ("captions", "all"):
        texts += [(CAPTION_QUESTION, c.caption, c.image) for c in captions if c.split == "train"]
    if data in ("cot", "all"):
        texts += [(s.question, s.response(), s.image) for s in samples]
    if not texts:
        raise ValueError(f"no {data} data to align the projector on")
    return [texts[i] for i in subset(len(texts), fraction, limit, seed)]
