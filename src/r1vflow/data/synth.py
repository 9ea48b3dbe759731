"""Procedural synthesis of verifiable visual reasoning tasks.

Three task families stand in for R1V's reasoning data at a size a CPU can train on. Every image
is a small square (32 px in the CPU presets, 48 px also tested) with thick, saturated shapes or
real handwritten digits on a dark background, so a ~3M-parameter ViT with 8 px patches can read
it. Every answer is computed from the scene's ground truth (stored in ``Sample.meta``), so it can
be graded by rule.

counting
    1..max_objects filled circles, squares and triangles in red, green, blue or yellow, one per
    cell of a 2x2 grid (3x3 when max_objects > 4), never overlapping. The question asks for the
    number of objects of a colour, a shape, or both; the answer 0..max_objects is drawn
    uniformly first, then a scene with that many matches. The reasoning lists the matching
    objects in reading order, then the count. Example: "How many red objects are there?" ->
    ``red circle top-left. red square bottom-right. 2 red objects.`` -> ``2``.
digit_arithmetic
    Two real 8x8 handwritten digits from scikit-learn's ``load_digits``, upsampled to half the
    image each (left and right). "What is the sum of the two digits?" or, when left >= right,
    "What is the left digit minus the right digit?". Example:
    ``left digit is 4. right digit is 7. 4 + 7 = 11.`` -> ``11``. Train images use the digits
    at even indices, validation and test those at odd indices, so no test digit image is ever
    seen in training.
comparison
    Objects in a 4x4 grid whose left two columns are the left half. "Which side has more
    objects, left or right?" (the two sides never hold the same count) or "Are there more red
    than blue objects?" (yes/no). The reasoning lists and counts both sides (or both colours).
    Example: ``left: red circle, blue square. 2 on the left. right: green triangle. 1 on the
    right. 2 is more than 1. left has more.`` -> ``left``.

Splits never overlap: each split draws from its own seeded stream, samples are de-duplicated by
(image pixels, question) within a split, and a validation or test sample is redrawn when its
image's pixels equal those of any earlier split's image (train, then val, then test). The same
seed gives byte-identical files and so the same digest.

Preference pairs (for the reward model) pair the reference response with a rejected one of four
kinds, mixed evenly: ``wrong_answer`` (reasoning correct, answer wrong), ``miscount`` (the
reasoning misreads the scene, e.g. misses, recolours or invents an object or misreads a digit,
and the answer follows the misreading), ``broken_format`` (tags missing or misordered) and
``contradiction`` (the reasoning's last step concludes a wrong value while the answer is right).

Layout written by `synthesize` (dataset.json is written last, after every other file)::

    images/<id>.png  train.jsonl val.jsonl test.jsonl  captions.jsonl  preferences.jsonl
    dataset.json
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from rich.progress import Progress

from r1vflow.data.families import (
    COLOURS,
    FAMILIES,
    MIN_IMAGE_SIZE,
    POSITIONS,
    SHAPES,
    Family,
    Task,
    check_params,
    explain,
    make_meta,
    make_task,
)
from r1vflow.data.io import (
    CAPTIONS_FILE,
    IMAGES_DIR,
    INFO_FILE,
    PREFERENCES_FILE,
    atomic_write_bytes,
    dataset_digest,
    images_to_tensor,
    split_file,
    write_info,
    write_jsonl,
)
from r1vflow.data.schema import (
    PREFERENCE_KINDS,
    SPLITS,
    CaptionSample,
    DatasetInfo,
    PreferenceKind,
    PreferencePair,
    Sample,
    Split,
    format_response,
)

_MAX_REDRAWS_PER_SAMPLE = 50


@dataclass(frozen=True)
class _Drawn:
    """A generated task with the id and image path it was written under."""

    id: str
    split: Split
    image: str
    task: Task


def image_hash(image: Image.Image) -> str:
    """sha256 of an image's mode, size and raw pixels (independent of PNG encoding)."""
    header = f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode()
    return hashlib.sha256(header + image.tobytes()).hexdigest()


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _check_args(families: list[str], counts: dict[str, int], image_size: int, max_objects: int):
    if not families:
        raise ValueError("families must name at least one task family")
    unknown = [name for name in families if name not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; known: {sorted(FAMILIES)}")
    if len(set(families)) != len(families):
        raise ValueError(f"families lists a family twice: {families}")
    for name, value in counts.items():
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    for name in families:
        check_params(FAMILIES[name], image_size, max_objects)


def _prepare_dir(out: Path, overwrite: bool) -> None:
    """Create ``out``; refuse a non-empty one unless ``overwrite`` (then clear our own files)."""
    out.mkdir(parents=True, exist_ok=True)
    ours = {INFO_FILE, IMAGES_DIR, CAPTIONS_FILE, PREFERENCES_FILE, *map(split_file, SPLITS)}
    present = {p.name for p in out.iterdir()}
    if not present:
        return
    if not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True to replace a data set")
    foreign = sorted(present - ours)
    if foreign:
        raise FileExistsError(f"{out} holds files that are not part of a data set: {foreign}")
    (out / INFO_FILE).unlink(missing_ok=True)  # first: an incomplete set has no dataset.json
    for name in present - {INFO_FILE}:
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()


def _draw_split(
    out: Path,
    prefix: str,
    split: Split,
    count: int,
    *,
    families: list[Family],
    rng: random.Random,
    image_size: int,
    max_objects: int,
    forbidden: set[str],
    advance,
) -> list[_Drawn]:
    """Draw ``count`` distinct tasks (round-robin over families), write their images, and add
    their image hashes to ``forbidden``."""
    pool = "train" if split == "train" else "heldout"
    drawn: list[_Drawn] = []
    seen: set[tuple[str, str]] = set()
    hashes: set[str] = set()
    redraws = 0
    while len(drawn) < count:
        family = families[len(drawn) % len(families)]
        task = make_task(family, rng, image_size, max_objects=max_objects, pool=pool)
        digest = image_hash(task.image)
        if digest in forbidden or (digest, task.question) in seen:
            redraws += 1
            if redraws > _MAX_REDRAWS_PER_SAMPLE * (count + 10):
                raise ValueError(
                    f"could not draw {count} distinct {split} samples of families "
                    f"{[f.name for f in families]} at max_objects={max_objects}: too few distinct "
                    "scenes; lower the sample count or raise max_objects/image_size"
                )
            continue
        seen.add((digest, task.question))
        hashes.add(digest)
        sample_id = f"{prefix}-{len(drawn):06d}"
        rel = f"{IMAGES_DIR}/{sample_id}.png"
        atomic_write_bytes(out / rel, _png_bytes(task.image))
        drawn.append(_Drawn(sample_id, split, rel, task))
        advance()
    forbidden |= hashes
    return drawn


def _sample(item: _Drawn) -> Sample:
    task = item.task
    return Sample(
        id=item.id,
        family=task.family,
        split=item.split,
        image=item.image,
        question=task.question,
        reasoning=task.reasoning,
        answer=task.answer,
        meta=task.meta,
    )


def wrong_answers(answer: str) -> list[str]:
    """Plausible wrong values of the same type: flipped words, or nearby non-negative numbers."""
    flips = {"left": "right", "right": "left", "yes": "no", "no": "yes"}
    if answer in flips:
        return [flips[answer]]
    value = int(answer)
    return [str(v) for v in (value - 2, value - 1, value + 1, value + 2) if v >= 0 and v != value]


def _numbers(text: str) -> list[str]:
    return re.findall(r"-?\d+", text)


def rejected_response(family: Family, meta: dict, kind: PreferenceKind, rng: random.Random) -> str:
    """A dispreferred response of ``kind`` to the question about scene ``meta``."""
    reasoning, answer = explain(family, meta)
    if kind == "wrong_answer":
        return format_response(reasoning, rng.choice(wrong_answers(answer)))
    if kind == "contradiction":
        premises, _ = family.solve(meta)
        final = family.conclude(meta, rng.choice(wrong_answers(answer)))
        return format_response(" ".join([*premises, final]), answer)
    if kind == "broken_format":
        variants = [
            f"{reasoning} {answer}",
            f"<answer>{answer}</answer><think>{reasoning}</think>",
            f"<think>{reasoning}</think>{answer}",
            f"<think>{reasoning}<answer>{answer}</answer>",
            f"<answer>{answer}</answer>",
        ]
        return rng.choice(variants)
    options = []
    for misread in family.misreadings(meta, rng):
        try:
            wrong_reasoning, wrong_answer = explain(family, misread)
        except ValueError:  # the misreading makes the question ambiguous (a tie)
            continue
        if wrong_reasoning != reasoning:
            rank = (wrong_answer != answer, _numbers(wrong_reasoning) != _numbers(reasoning))
            options.append((rank, wrong_reasoning, wrong_answer))
    if not options:
        raise ValueError(f"no misreading changes the reasoning of {family.name} scene {meta}")
    best = max(rank for rank, _, _ in options)  # prefer a changed answer, then changed counts
    _, wrong_reasoning, wrong_answer = rng.choice([o for o in options if o[0] == best])
    return format_response(wrong_reasoning, wrong_answer)


def build_preferences(items: list[_Drawn], count: int, rng: random.Random) -> list[PreferencePair]:
    """``count`` pairs cycling over ``items``; kinds rotate so all four are evenly mixed."""
    pairs = []
    for j in range(count if items else 0):
        item = items[j % len(items)]
        kind = PREFERENCE_KINDS[(j + j // len(items)) % len(PREFERENCE_KINDS)]
        family = FAMILIES[item.task.family]
        pairs.append(
            PreferencePair(
                id=f"pair-{j:06d}",
                split=item.split,
                image=item.image,
                question=item.task.question,
                chosen=format_response(item.task.reasoning, item.task.answer),
                rejected=rejected_response(family, item.task.meta, kind, rng),
                kind=kind,
                answer=item.task.answer,
            )
        )
    return pairs


def _draw_all(
    out: Path,
    jobs: list[tuple[Split, str, int]],
    families: list[Family],
    image_size: int,
    max_objects: int,
    seed: int,
    progress: bool,
) -> dict[str, list[_Drawn]]:
    """Run the (split, id prefix, count) jobs in order; later ones avoid earlier images."""
    forbidden: set[str] = set()
    drawn: dict[str, list[_Drawn]] = {}
    with Progress(disable=not progress, transient=False) as bar:
        job = bar.add_task("synthesizing", total=sum(max(0, n) for *_, n in jobs))
        for split, prefix, count in jobs:
            drawn[prefix] = _draw_split(
                out,
                prefix,
                split,
                max(0, count),
                families=families,
                max_objects=max_objects,
                rng=random.Random(f"r1vflow-synth:{seed}:{prefix}"),
                image_size=image_size,
                forbidden=forbidden,
                advance=lambda: bar.advance(job),
            )
    return drawn


def _write_records(
    out: Path, drawn: dict[str, list[_Drawn]], caption_count: int, pair_count: int, seed: int
) -> dict[str, int]:
    """Write the split, caption and preference files; returns their row counts."""
    for split in SPLITS:
        write_jsonl(out / split_file(split), map(_sample, drawn[split]))
    with_captions = (drawn["train"] + drawn["val"] + drawn["caption"])[:caption_count]
    captions = (
        CaptionSample(id=f"cap-{d.id}", split=d.split, image=d.image, caption=d.task.caption)
        for d in with_captions
    )
    write_jsonl(out / CAPTIONS_FILE, captions)
    rng = random.Random(f"r1vflow-prefs:{seed}")
    pairs = build_preferences(drawn["train"] + drawn["val"], pair_count, rng)
    write_jsonl(out / PREFERENCES_FILE, pairs)
    return {"captions": len(with_captions), "preferences": len(pairs)}


def synthesize(
    out_dir: str | os.PathLike[str],
    *,
    families: list[str],
    num_train: int,
    num_val: int,
    num_test: int,
    image_size: int,
    seed: int,
    max_objects: int = 4,
    num_captions: int | None = None,
    num_preference_pairs: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> DatasetInfo:
    """Write a complete data set directory and return its `DatasetInfo`.

    Args:
        families: task families mixed round-robin (names from ``FAMILIES``).
        num_train, num_val, num_test: samples per split.
        image_size: side of the square images in pixels (>= 16).
        seed: everything is a deterministic function of it (same seed, same digest).
        max_objects: most objects per scene (per side for comparison).
        num_captions: caption rows; default one per train and val image. Beyond that many,
            extra caption-only images (``images/caption-*.png``) are drawn, never sharing an
            image with val or test.
        num_preference_pairs: pairs; default one per train and val sample.
        overwrite: replace an existing data set in ``out_dir`` (else a non-empty dir is an error).
    """
    counts = {
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "num_captions": num_captions,
        "num_preference_pairs": num_preference_pairs,
    }
    _check_args(families, counts, image_size, max_objects)
    if num_preference_pairs and num_train + num_val == 0:
        raise ValueError("num_preference_pairs > 0 needs train or val samples to pair up")
    out = Path(out_dir)
    _prepare_dir(out, overwrite)
    (out / IMAGES_DIR).mkdir()
    sizes = dict(zip(SPLITS, (num_train, num_val, num_test), strict=True))
    captioned = num_train + num_val
    caption_count = captioned if num_captions is None else num_captions
    jobs = [*((s, s, n) for s, n in sizes.items()), ("train", "caption", caption_count - captioned)]
    drawn = _draw_all(
        out, jobs, [FAMILIES[name] for name in families], image_size, max_objects, seed, progress
    )
    pair_count = captioned if num_preference_pairs is None else num_preference_pairs
    counts = _write_records(out, drawn, caption_count, pair_count, seed)
    files = {split: split_file(split) for split in SPLITS}
    files |= {"captions": CAPTIONS_FILE, "preferences": PREFERENCES_FILE, "images": IMAGES_DIR}
    info = DatasetInfo(
        digest=dataset_digest(out),
        counts={**sizes, **counts, "images": sum(map(len, drawn.values()))},
        families=list(families),
        image_size=image_size,
        seed=seed,
        max_objects=max_objects,
        files=files,
        root=out,
    )
    write_info(out, info)
    return info


# ----------------------------------------------------------------------------- bootstrap corpora
ATTRIBUTE_NAMES: list[str] = [
    *(f"count_{colour}" for colour in COLOURS),
    *(f"count_{shape}" for shape in SHAPES),
    "count_left",
    "count_right",
    *(f"left_digit_{d}" for d in range(10)),
    *(f"right_digit_{d}" for d in range(10)),
]
NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
)


def scene_attributes(meta: dict) -> list[float]:
    """The attribute vector (see `ATTRIBUTE_NAMES`) of a scene: objects per colour, per shape,
    per half (left/right, where the grid has halves), and one-hot left/right digit classes."""
    values = dict.fromkeys(ATTRIBUTE_NAMES, 0.0)
    for obj in meta["objects"]:
        if "digit" in obj:
            values[f"{obj['side']}_digit_{obj['digit']}"] = 1.0
            continue
        values[f"count_{obj['colour']}"] += 1.0
        values[f"count_{obj['shape']}"] += 1.0
        if "side" in obj:
            values[f"count_{obj['side']}"] += 1.0
    return [values[name] for name in ATTRIBUTE_NAMES]


def vision_pretraining_set(
    n: int,
    image_size: int,
    seed: int,
    *,
    families: list[str] | None = None,
    max_objects: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and attribute targets for pretraining a vision encoder before the pipeline.

    Drawn from the family generators on a seed stream of its own (never the one `synthesize`
    uses) and, for digits, from the train pool only, so no held-out digit image is used.

    Returns:
        images [n, 3, image_size, image_size] in [-1, 1]; targets [n, len(ATTRIBUTE_NAMES)].
    """
    names = families or list(FAMILIES)
    _check_args(names, {"n": n}, image_size, max_objects)
    rng = random.Random(f"r1vflow-pretrain:{seed}")
    images, targets = [], []
    for i in range(n):
        family = FAMILIES[names[i % len(names)]]
        meta = make_meta(family, rng, image_size, max_objects, "train")
        images.append(family.render(meta, image_size))
        targets.append(scene_attributes(meta))
    target = torch.tensor(targets, dtype=torch.float32).reshape(n, len(ATTRIBUTE_NAMES))
    return images_to_tensor(images, image_size), target


def _fact(rng: random.Random) -> str:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    form = rng.randrange(3)
    if form == 0:
        return f"{a} + {b} = {a + b}."
    if form == 1:
        return f"{max(a, b)} - {min(a, b)} = {max(a, b) - min(a, b)}."
    return f"{a} is {NUMBER_WORDS[a]}. {a + b} is {NUMBER_WORDS[a + b]}."


def text_corpus(
    kind: Literal["reasoning", "caption"],
    n: int,
    seed: int,
    *,
    families: list[str] | None = None,
    max_objects: int = 4,
) -> list[str]:
    """``n`` text-only documents about the families' scenes, for pretraining a tiny LM.

    "reasoning": the scene in words, the question and the tagged response (every fifth
    document an arithmetic or number-word fact). "caption": plain descriptions and short
    question/answer text without ``<think>``, for the substitute instruct LLM.
    """
    if kind not in ("reasoning", "caption"):
        raise ValueError(f"kind must be 'reasoning' or 'caption', got {kind!r}")
    names = families or list(FAMILIES)
    _check_args(names, {"n": n}, 2 * MIN_IMAGE_SIZE, max_objects)
    rng = random.Random(f"r1vflow-text:{kind}:{seed}")
    docs = []
    for i in range(n):
        if kind == "reasoning" and i % 5 == 4:
            docs.append(_fact(rng))
            continue
        family = FAMILIES[names[i % len(names)]]
        meta = make_meta(family, rng, 2 * MIN_IMAGE_SIZE, max_objects, "train")
        scene, question = f"The picture shows: {family.scene(meta)}.", family.question(meta)
        reasoning, answer = explain(family, meta)
        if kind == "reasoning":
            docs.append(f"{scene} {question} {format_response(reasoning, answer)}")
        elif (template := (i // len(names)) % 3) == 0:
            docs.append(family.caption(meta))
        elif template == 1:
            docs.append(f"Describe the picture. {family.caption(meta)}")
        else:
            docs.append(f"{scene} {question} {answer}")
    return docs


def tokenizer_corpus(seed: int) -> list[str]:
    """Documents covering every word the families, their captions and rejected responses can
    produce (both grid layouts, every number from -9 to 18 and its word), for training BPE."""
    vocabulary = [
        " ".join(COLOURS),
        " ".join(word for shape in SHAPES for word in (shape, shape + "s", shape + ".")),
        " ".join(word for rows in POSITIONS.values() for row in rows for word in row),
        " ".join(str(v) for v in range(-9, 19)),
        " ".join(NUMBER_WORDS),
    ]
    docs = [*vocabulary]
    for max_objects in (4, 8):
        docs += text_corpus("reasoning", 1500, seed, max_objects=max_objects)
        docs += text_corpus("caption", 1500, seed, max_objects=max_objects)
    return docs
