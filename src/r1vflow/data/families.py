"""Procedural task families: scenes with verifiable answers (see the docstring of synth.py).

A family is a set of pure functions over a JSON-able ``meta`` dict (the scene's ground truth):
``sample`` draws a scene from an rng, ``render`` draws it, ``solve`` derives the reasoning steps
and the answer from it, ``conclude`` words the final reasoning step for a given answer, and
``misreadings`` lists plausible misperceptions of the scene (used for "miscount" preference
pairs). `counting`, `digit_arithmetic` and `comparison` compose these into a `Task`.
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

DigitPool = Literal["train", "heldout"]
Meta = dict[str, Any]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (235, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 90, 255),
    "yellow": (250, 220, 0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND: tuple[int, int, int] = (16, 16, 16)
MIN_IMAGE_SIZE = 16
POSITIONS: dict[int, list[list[str]]] = {
    2: [["top-left", "top-right"], ["bottom-left", "bottom-right"]],
    3: [
        ["top-left", "top", "top-right"],
        ["left", "center", "right"],
        ["bottom-left", "bottom", "bottom-right"],
    ],
}
_MAX_REDRAWS = 100
_COMPARISON_GRID = 4  # 4x4 cells: columns 0-1 are the left half, 2-3 the right half


@dataclass(frozen=True)
class Task:
    """One generated problem. ``meta["objects"]`` lists the scene's objects in reading order."""

    family: str
    image: Image.Image
    question: str
    reasoning: str
    answer: str
    meta: Meta
    caption: str


@dataclass(frozen=True)
class Family:
    """The pure functions that make up one task family (all share these signatures)."""

    name: str
    sample: Callable[[random.Random, int, int, DigitPool], Meta]  # rng, image_size, max_objects
    render: Callable[[Meta, int], Image.Image]
    question: Callable[[Meta], str]
    solve: Callable[[Meta], tuple[list[str], str]]  # (premises, answer); raises on ambiguity
    conclude: Callable[[Meta, str], str]  # final reasoning step stating ``answer``
    misreadings: Callable[[Meta, random.Random], list[Meta]]
    scene: Callable[[Meta], str]  # short inline description, e.g. "red circle top-left"
    caption: Callable[[Meta], str]
    max_objects: int = field(default=9)


# ----------------------------------------------------------------------------- shape scenes
def _make_object(shape: str, colour: str, row: int, col: int, grid: int) -> Meta:
    obj: Meta = {"shape": shape, "colour": colour, "row": row, "col": col}
    if grid in POSITIONS:
        obj["position"] = POSITIONS[grid][row][col]
    if grid % 2 == 0:
        obj["side"] = "left" if col < grid // 2 else "right"
    return obj


def _place(rng: random.Random, image_size: int, grid: int, row: int, col: int) -> list[int]:
    """Inclusive pixel box of a shape inside cell (row, col), with at least 1 px of margin."""
    cell = image_size // grid
    offset = (image_size - cell * grid) // 2
    hi = cell - 2
    lo = min(hi, max(4, round(0.6 * cell)))
    side = rng.randint(lo, hi)
    x0 = offset + col * cell + rng.randint(1, cell - side - 1)
    y0 = offset + row * cell + rng.randint(1, cell - side - 1)
    return [x0, y0, x0 + side - 1, y0 + side - 1]


def _scatter(
    rng: random.Random, image_size: int, grid: int, looks: dict[int, tuple[str, str]]
) -> list[Meta]:
    """Objects in reading order from {cell index: (colour, shape)}, each with its pixel box."""
    objects = []
    for cell in sorted(looks):
        row, col = divmod(cell, grid)
        obj = _make_object(looks[cell][1], looks[cell][0], row, col, grid)
        obj["box"] = _place(rng, image_size, grid, row, col)
        objects.append(obj)
    return objects


def _render_objects(meta: Meta, image_size: int) -> Image.Image:
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in meta["objects"]:
        x0, y0, x1, y1 = obj["box"]
        fill = COLOURS[obj["colour"]]
        if obj["shape"] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj["shape"] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return image


def _object_misreadings(meta: Meta, rng: random.Random) -> list[Meta]:
    """Scenes as a careless reader might see them: one object missed or seen in another colour/shape,
    or one of any colour and shape hallucinated in an empty cell (drawn by ``rng``)."""
    grid, objects = meta["grid"], meta["objects"]
    out: list[Meta] = []

    def variant(new_objects: list[Meta]) -> Meta:
        return {**meta, "objects": sorted(new_objects, key=lambda o: (o["row"], o["col"]))}

    for i, obj in enumerate(objects):
        out.append(variant(objects[:i] + objects[i + 1 :]))
        for colour, shape in itertools.product(COLOURS, SHAPES):
            if (colour, shape) != (obj["colour"], obj["shape"]):
                swapped = _make_object(shape, colour, obj["row"], obj["col"], grid)
                out.append(variant([*objects[:i], swapped, *objects[i + 1 :]]))
    used = {(o["row"], o["col"]) for o in objects}
    empty = [(r, c) for r in range(grid) for c in range(grid) if (r, c) not in used]
    if empty:
        row, col = rng.choice(empty)
        for colour, shape in itertools.product(COLOURS, SHAPES):
            out.append(variant([*objects, _make_object(shape, colour, row, col, grid)]))
    return out


def _plural(word: str, count: str) -> str:
    return word if count == "1" else word + "s"


def _names(objects: list[Meta]) -> str:
    return ", ".join(f"{o['colour']} {o['shape']}" for o in objects) or "nothing"


def _relation(a: int, b: int) -> str:
    return f"{a} {'is more than' if a > b else 'is less than' if a < b else 'equals'} {b}."


# ----------------------------------------------------------------------------- counting
def _counting_sample(
    rng: random.Random, image_size: int, max_objects: int, pool: DigitPool
) -> Meta:
    """The answer (0..max_objects) is drawn first, uniformly, then a scene that has it."""
    grid = 2 if max_objects <= 4 else 3
    kind = rng.choice(["colour", "shape", "colour_shape"])
    colour = rng.choice(list(COLOURS)) if kind != "shape" else None
    shape = rng.choice(SHAPES) if kind != "colour" else None
    answer = rng.randint(0, max_objects)
    cells = rng.sample(range(grid * grid), rng.randint(max(answer, 1), max_objects))
    looks: dict[int, tuple[str, str]] = {}
    for i, cell in enumerate(cells):
        while True:
            look = (rng.choice(list(COLOURS)), rng.choice(SHAPES))
            matches = colour in (None, look[0]) and shape in (None, look[1])
            if matches == (i < answer):
                break
        looks[cell] = (colour or look[0], shape or look[1]) if i < answer else look
    return {
        "grid": grid,
        "objects": _scatter(rng, image_size, grid, looks),
        "question_type": kind,
        "colour": colour,
        "shape": shape,
    }


def _counting_noun(meta: Meta, count: str) -> str:
    noun = _plural(meta["shape"] or "object", count)
    return f"{meta['colour']} {noun}" if meta["colour"] else noun


def _counting_matches(meta: Meta) -> list[Meta]:
    return [
        o
        for o in meta["objects"]
        if meta["colour"] in (None, o["colour"]) and meta["shape"] in (None, o["shape"])
    ]


def _counting_solve(meta: Meta) -> tuple[list[str], str]:
    matches = _counting_matches(meta)
    premises = [f"{o['colour']} {o['shape']} {o['position']}." for o in matches]
    return premises or ["none found."], str(len(matches))


COUNTING = Family(
    name="counting",
    sample=_counting_sample,
    render=_render_objects,
    question=lambda m: f"How many {_counting_noun(m, 'many')} are there?",
    solve=_counting_solve,
    conclude=lambda m, answer: f"{answer} {_counting_noun(m, answer)}.",
    misreadings=_object_misreadings,
    scene=lambda m: ", ".join(f"{o['colour']} {o['shape']} {o['position']}" for o in m["objects"]),
    caption=lambda m: (
        f"{len(m['objects'])} {_plural('shape', str(len(m['objects'])))} on a dark background: "
        + ", ".join(f"{o['colour']} {o['shape']} {o['position']}" for o in m["objects"])
        + "."
    ),
    max_objects=9,
)


# ----------------------------------------------------------------------------- comparison
def _comparison_sample(
    rng: random.Random, image_size: int, max_objects: int, pool: DigitPool
) -> Meta:
    grid, half = _COMPARISON_GRID, _COMPARISON_GRID // 2
    kind = rng.choice(["side", "colour"])
    n_left, n_right = rng.sample(range(max_objects + 1), 2)
    left = [r * grid + c for r in range(grid) for c in range(half)]
    right = [r * grid + c + half for r in range(grid) for c in range(half)]
    cells = rng.sample(left, n_left) + rng.sample(right, n_right)
    pair = rng.sample(list(COLOURS), 2)
    palette = list(COLOURS) if kind == "side" else pair * 3 + list(COLOURS)  # favour the pair
    looks = {cell: (rng.choice(palette), rng.choice(SHAPES)) for cell in cells}
    objects = _scatter(rng, image_size, grid, looks)
    return {"grid": grid, "objects": objects, "question_type": kind, "colours": pair}


def _sides(meta: Meta) -> tuple[list[Meta], list[Meta]]:
    objects = meta["objects"]
    return [o for o in objects if o["side"] == "left"], [o for o in objects if o["side"] == "right"]


def _comparison_solve(meta: Meta) -> tuple[list[str], str]:
    if meta["question_type"] == "side":
        left, right = _sides(meta)
        if len(left) == len(right):
            raise ValueError("both sides hold the same number of objects")
        premises = [
            f"left: {_names(left)}.",
            f"{len(left)} on the left.",
            f"right: {_names(right)}.",
            f"{len(right)} on the right.",
            _relation(len(left), len(right)),
        ]
        return premises, "left" if len(left) > len(right) else "right"
    steps, counts = [], []
    for colour in meta["colours"]:
        shapes = [o["shape"] for o in meta["objects"] if o["colour"] == colour]
        steps += [f"{colour}: {', '.join(shapes) or 'none'}.", f"{len(shapes)} {colour}."]
        counts.append(len(shapes))
    return [*steps, _relation(*counts)], "yes" if counts[0] > counts[1] else "no"


def _comparison_conclude(meta: Meta, answer: str) -> str:
    if meta["question_type"] == "side":
        return f"{answer} has more."
    first, second = meta["colours"]
    return f"more {first} than {second}: {answer}."


def _comparison_question(meta: Meta) -> str:
    if meta["question_type"] == "side":
        return "Which side has more objects, left or right?"
    first, second = meta["colours"]
    return f"Are there more {first} than {second} objects?"


COMPARISON = Family(
    name="comparison",
    sample=_comparison_sample,
    render=_render_objects,
    question=_comparison_question,
    solve=_comparison_solve,
    conclude=_comparison_conclude,
    misreadings=_object_misreadings,
    scene=lambda m: "left half: {}; right half: {}".format(*map(_names, _sides(m))),
    caption=lambda m: "Shapes on a dark background. Left half: {}. Right half: {}.".format(
        *map(_names, _sides(m))
    ),
    max_objects=2 * _COMPARISON_GRID,
)


# ----------------------------------------------------------------------------- digit arithmetic
@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real 8x8 handwritten digits: images [N, 8, 8] in 0..16, labels [N]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def digit_pool(pool: DigitPool) -> list[int]:
    """Indices of load_digits images in a pool: even indices train, odd ones are held out."""
    count = len(_digits()[1])
    return list(range(0 if pool == "train" else 1, count, 2))


def _digit_sample(rng: random.Random, image_size: int, max_objects: int, pool: DigitPool) -> Meta:
    labels, indices = _digits()[1], digit_pool(pool)
    objects = []
    for side in ("left", "right"):
        index = rng.choice(indices)
        objects.append({"digit": int(labels[index]), "side": side, "index": index})
    subtract = objects[0]["digit"] >= objects[1]["digit"] and rng.random() < 0.5
    return {"objects": objects, "op": "-" if subtract else "+", "pool": pool}


def _digit_render(meta: Meta, image_size: int) -> Image.Image:
    images = _digits()[0]
    half = image_size // 2
    canvas = Image.new("L", (image_size, image_size), BACKGROUND[0])
    for slot, obj in enumerate(meta["objects"]):
        pixels = np.clip(images[obj["index"]] * (255.0 / 16.0), BACKGROUND[0], 255).astype(np.uint8)
        glyph = Image.fromarray(pixels).resize((half, half), Image.Resampling.BILINEAR)
        canvas.paste(glyph, (slot * half, (image_size - half) // 2))
    return canvas.convert("RGB")


def _digit_solve(meta: Meta) -> tuple[list[str], str]:
    left, right = (o["digit"] for o in meta["objects"])
    value = left + right if meta["op"] == "+" else left - right
    return [f"left digit is {left}.", f"right digit is {right}."], str(value)


def _digit_misreadings(meta: Meta, rng: random.Random) -> list[Meta]:
    out = []
    for slot in (0, 1):
        for digit in range(10):
            if digit != meta["objects"][slot]["digit"]:
                new = copy.deepcopy(meta)
                new["objects"][slot]["digit"] = digit
                out.append(new)
    return out


DIGIT_ARITHMETIC = Family(
    name="digit_arithmetic",
    sample=_digit_sample,
    render=_digit_render,
    question=lambda m: (
        "What is the sum of the two digits?"
        if m["op"] == "+"
        else "What is the left digit minus the right digit?"
    ),
    solve=_digit_solve,
    conclude=lambda m, answer: "{} {} {} = {}.".format(
        m["objects"][0]["digit"], m["op"], m["objects"][1]["digit"], answer
    ),
    misreadings=_digit_misreadings,
    scene=lambda m: "handwritten {} on the left, handwritten {} on the right".format(
        *(o["digit"] for o in m["objects"])
    ),
    caption=lambda m: (
        "Two handwritten digits on a dark background: {} on the left and {} on the right.".format(
            *(o["digit"] for o in m["objects"])
        )
    ),
)

FAMILIES: dict[str, Family] = {f.name: f for f in (COUNTING, DIGIT_ARITHMETIC, COMPARISON)}


# ----------------------------------------------------------------------------- tasks
def explain(family: Family, meta: Meta) -> tuple[str, str]:
    """(reasoning, answer) for a scene: the premises, then the concluding step."""
    premises, answer = family.solve(meta)
    return " ".join([*premises, family.conclude(meta, answer)]), answer


def check_params(family: Family, image_size: int, max_objects: int) -> None:
    """Raise ValueError naming the bad argument when a family cannot draw such a scene."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    if not 1 <= max_objects <= family.max_objects:
        raise ValueError(
            f"max_objects must be in 1..{family.max_objects} for family {family.name!r}, "
            f"got {max_objects}"
        )


def make_meta(
    family: Family, rng: random.Random, image_size: int, max_objects: int, pool: DigitPool
) -> Meta:
    """Draw one scene's ground truth; redraws the (rare) scenes whose question is ambiguous."""
    check_params(family, image_size, max_objects)
    for _ in range(_MAX_REDRAWS):
        meta = family.sample(rng, image_size, max_objects, pool)
        try:
            family.solve(meta)
        except ValueError:
            continue
        return meta
    raise ValueError(f"family {family.name!r} drew {_MAX_REDRAWS} ambiguous scenes in a row")


def make_task(
    family: Family,
    rng: random.Random,
    image_size: int,
    *,
    max_objects: int = 4,
    pool: DigitPool = "train",
) -> Task:
    """Draw a scene, render it at ``image_size`` and derive question, reasoning and answer."""
    meta = make_meta(family, rng, image_size, max_objects, pool)
    reasoning, answer = explain(family, meta)
    return Task(
        family=family.name,
        image=family.render(meta, image_size),
        question=family.question(meta),
        reasoning=reasoning,
        answer=answer,
        meta=meta,
        caption=family.caption(meta),
    )


def counting(
    rng: random.Random, image_size: int, *, max_objects: int = 4, pool: DigitPool = "train"
) -> Task:
    """How many objects of a colour / shape / both? (``pool`` is unused: no digits drawn.)"""
    return make_task(COUNTING, rng, image_size, max_objects=max_objects, pool=pool)


def digit_arithmetic(
    rng: random.Random, image_size: int, *, max_objects: int = 4, pool: DigitPool = "train"
) -> Task:
    """Sum (or difference) of two real handwritten digits drawn from ``pool``."""
    return make_task(DIGIT_ARITHMETIC, rng, image_size, max_objects=max_objects, pool=pool)


def comparison(
    rng: random.Random, image_size: int, *, max_objects: int = 4, pool: DigitPool = "train"
) -> Task:
    """Which half holds more objects, or are there more of one colour than another?"""
    return make_task(COMPARISON, rng, image_size, max_objects=max_objects, pool=pool)
