"""Tests of the data layer: schemas, task families, synthesis, I/O and bootstrap corpora."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from r1vflow.data import (
    ATTRIBUTE_NAMES,
    PREFERENCE_KINDS,
    SPLITS,
    Sample,
    comparison,
    counting,
    dataset_digest,
    digit_arithmetic,
    images_to_tensor,
    load_captions,
    load_image,
    load_preferences,
    load_split,
    read_info,
    synthesize,
    text_corpus,
    tokenizer_corpus,
    vision_pretraining_set,
)
from r1vflow.data.families import COLOURS, digit_pool
from r1vflow.data.synth import image_hash

FAMILY_NAMES = ["counting", "digit_arithmetic", "comparison"]
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
WELL_FORMED = re.compile(r"^<think>[^<>]+</think><answer>[^<>]+</answer>$")


def _make(out: Path, seed: int = 0, **overrides) -> object:
    args = dict(families=FAMILY_NAMES, num_train=48, num_val=12, num_test=12, image_size=32)
    return synthesize(out, **{**args, **overrides}, seed=seed, progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "ds"
    _make(out, num_captions=70)  # 10 more captions than train + val images
    return out


def test_same_seed_same_digest_and_other_seed_differs(tmp_path, dataset):
    again = _make(tmp_path / "again", num_captions=70)
    other = _make(tmp_path / "other", seed=1, num_captions=70)
    info = read_info(dataset)
    assert again.digest == info.digest == dataset_digest(dataset)
    assert other.digest != info.digest
    assert info.counts == {
        "train": 48,
        "val": 12,
        "test": 12,
        "captions": 70,
        "preferences": 60,
        "images": 82,
    }
    assert info.path("train") == dataset / "train.jsonl"


def test_splits_never_share_an_image(dataset):
    hashes = {}
    for split in SPLITS:
        samples = load_split(dataset, split)
        keys = [(image_hash(load_image(dataset, s.image)), s.question) for s in samples]
        assert len(set(keys)) == len(keys), f"duplicate (image, question) in {split}"
        hashes[split] = {h for h, _ in keys}
    assert not hashes["train"] & hashes["test"]
    assert not hashes["train"] & hashes["val"]
    assert not hashes["val"] & hashes["test"]
    extra = [c for c in load_captions(dataset) if c.image.startswith("images/caption-")]
    assert len(extra) == 10
    extra_hashes = {image_hash(load_image(dataset, c.image)) for c in extra}
    assert not extra_hashes & (hashes["val"] | hashes["test"])


def test_family_mix_is_round_robin(dataset):
    families = [s.family for s in load_split(dataset, "train")]
    assert families[:6] == FAMILY_NAMES * 2
    assert {f: families.count(f) for f in FAMILY_NAMES} == dict.fromkeys(FAMILY_NAMES, 16)


def test_digit_images_come_from_disjoint_pools(dataset):
    for split, parity in (("train", 0), ("val", 1), ("test", 1)):
        for sample in load_split(dataset, split):
            for obj in sample.meta["objects"] if sample.family == "digit_arithmetic" else []:
                assert obj["index"] % 2 == parity
    assert not set(digit_pool("train")) & set(digit_pool("heldout"))


def test_bad_row_names_file_line_and_field(tmp_path, dataset):
    bad = tmp_path / "bad"
    bad.mkdir()
    lines = (dataset / "train.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    del row["answer"]
    lines[2] = json.dumps(row)
    (bad / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train\.jsonl:3: invalid Sample row.*answer"):
        load_split(bad, "train")
    row = json.loads(lines[0]) | {"colour_typo": 1}
    (bad / "train.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"train\.jsonl:1:.*colour_typo"):
        load_split(bad, "train")
    with pytest.raises(ValueError, match=r"split='train', expected 'val'"):
        (bad / "val.jsonl").write_text(lines[0] + "\n")
        load_split(bad, "val")


def test_schema_rejects_tags_in_reasoning_and_escaping_paths():
    good = dict(
        id="a",
        family="counting",
        split="train",
        image="images/a.png",
        question="How many?",
        reasoning="1 red object.",
        answer="1",
    )
    assert Sample(**good).response() == "<think>1 red object.</think><answer>1</answer>"
    with pytest.raises(ValidationError, match="reasoning"):
        Sample(**good | {"reasoning": "<think>1</think>"})
    with pytest.raises(ValidationError, match="image"):
        Sample(**good | {"image": "../secret.png"})


def _counting_truth(meta: dict) -> int:
    return sum(
        (meta["colour"] is None or o["colour"] == meta["colour"])
        and (meta["shape"] is None or o["shape"] == meta["shape"])
        for o in meta["objects"]
    )


def _comparison_truth(meta: dict) -> str:
    if meta["question_type"] == "side":
        left = sum(o["col"] < 2 for o in meta["objects"])
        right = len(meta["objects"]) - left
        assert left != right
        return "left" if left > right else "right"
    first, second = (sum(o["colour"] == c for o in meta["objects"]) for c in meta["colours"])
    return "yes" if first > second else "no"


def _check_drawn_objects(task, image_size: int) -> None:
    """Objects lie inside the image, do not overlap, and the pixel at each centre has the
    object's colour."""
    pixels = np.asarray(task.image)
    boxes = [o["box"] for o in task.meta["objects"]]
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        assert 0 <= x0 < x1 < image_size and 0 <= y0 < y1 < image_size
        for a0, b0, a1, b1 in boxes[i + 1 :]:
            assert x1 < a0 or a1 < x0 or y1 < b0 or b1 < y0, "overlapping objects"
    for obj in task.meta["objects"]:
        x0, y0, x1, y1 = obj["box"]
        centre = pixels[(y0 + y1 + 1) // 2, (x0 + x1) // 2]
        assert tuple(centre) == COLOURS[obj["colour"]], obj


@pytest.mark.parametrize("image_size", [32, 48])
def test_every_family_answer_matches_its_scene(image_size):
    from sklearn.datasets import load_digits

    labels = load_digits().target
    rng = random.Random(7)
    for _ in range(150):
        task = counting(rng, image_size)
        assert task.answer == str(_counting_truth(task.meta))
        assert task.reasoning.rsplit(". ", 1)[-1].startswith(f"{task.answer} ")
        _check_drawn_objects(task, image_size)

        task = comparison(rng, image_size, max_objects=5)
        assert task.answer == _comparison_truth(task.meta)
        _check_drawn_objects(task, image_size)

        task = digit_arithmetic(rng, image_size, pool="heldout")
        left, right = task.meta["objects"]
        assert (left["digit"], right["digit"]) == (labels[left["index"]], labels[right["index"]])
        value = (
            left["digit"] + right["digit"]
            if task.meta["op"] == "+"
            else (left["digit"] - right["digit"])
        )
        assert task.answer == str(value) and value >= 0
        assert task.reasoning.endswith(f"= {value}.")
        assert task.image.mode == "RGB" and task.image.size == (image_size, image_size)


def test_counting_answers_are_balanced():
    rng = random.Random(11)
    answers = [counting(rng, 32).answer for _ in range(500)]
    assert all(60 <= answers.count(str(k)) <= 140 for k in range(5)), answers


def test_counting_reasoning_lists_matches_in_reading_order():
    rng = random.Random(3)
    task = next(t for t in (counting(rng, 32) for _ in range(200)) if int(t.answer) >= 2)
    matches = [o for o in task.meta["objects"] if _counting_truth({**task.meta, "objects": [o]})]
    listed = [f"{o['colour']} {o['shape']} {o['position']}." for o in matches]
    assert task.reasoning.startswith(" ".join(listed))
    order = [(o["row"], o["col"]) for o in matches]
    assert order == sorted(order)


def test_preference_pairs(dataset):
    pairs = load_preferences(dataset)
    by_key = {
        (s.image, s.question): s for split in ("train", "val") for s in load_split(dataset, split)
    }
    assert {p.kind for p in pairs} == set(PREFERENCE_KINDS)
    for pair in pairs:
        sample = by_key[(pair.image, pair.question)]
        assert pair.chosen == sample.response() and pair.answer == sample.answer
        assert pair.rejected != pair.chosen
        if pair.kind == "broken_format":
            assert not WELL_FORMED.match(pair.rejected)
            continue
        assert WELL_FORMED.match(pair.rejected), pair
        think, answer = re.findall(r"<think>(.*)</think><answer>(.*)</answer>", pair.rejected)[0]
        if pair.kind == "wrong_answer":
            assert think == sample.reasoning and answer != sample.answer
        elif pair.kind == "contradiction":
            assert answer == sample.answer and think != sample.reasoning
            assert think.rsplit(". ", 1)[0] == sample.reasoning.rsplit(". ", 1)[0]
        else:  # miscount: the reasoning misreads the scene
            assert think != sample.reasoning


def test_images_and_tensor_convention(dataset, tmp_path):
    sample = load_split(dataset, "test")[0]
    image = load_image(dataset, sample.image)
    assert image.mode == "RGB" and image.size == (32, 32)
    big = _make(tmp_path / "big", image_size=48, num_train=3, num_val=0, num_test=0)
    assert load_image(big.root, "images/train-000000.png").size == (48, 48)
    black, white = Image.new("RGB", (2, 2), (0, 0, 0)), Image.new("RGB", (2, 2), (255, 255, 255))
    grey = Image.new("RGB", (4, 4), (51, 102, 255))  # resized to 2x2
    batch = images_to_tensor([black, white, grey], 2)
    assert batch.shape == (3, 3, 2, 2) and batch.dtype == torch.float32
    assert torch.all(batch[0] == -1) and torch.all(batch[1] == 1)
    assert torch.allclose(batch[2, :, 0, 0], torch.tensor([-0.6, -0.2, 1.0]))
    with pytest.raises(ValueError, match="outside"):
        load_image(dataset, "../elsewhere.png")


def test_refuses_to_overwrite_unless_asked(tmp_path, dataset):
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _make(dataset)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        _make(tmp_path, overwrite=True)
    with pytest.raises(ValueError, match="unknown task families"):
        _make(tmp_path / "x", families=["counting", "sudoku"])


def test_text_corpora():
    reasoning = text_corpus("reasoning", 50, seed=0)
    assert len(reasoning) == 50 and reasoning == text_corpus("reasoning", 50, seed=0)
    tagged = [d for d in reasoning if "<think>" in d]
    assert len(tagged) == 40
    for doc in tagged:
        assert all(tag in doc for tag in TAGS) and doc.startswith("The picture shows:")
    assert any(re.fullmatch(r"\d \+ \d = \d+\.", d) for d in reasoning)
    captions = text_corpus("caption", 30, seed=0)
    assert not any(tag in doc for doc in captions for tag in TAGS)
    assert any(d.startswith("Describe the picture.") for d in captions)


def test_tokenizer_corpus_covers_every_word(dataset):
    known = {w for doc in tokenizer_corpus(0) for w in re.split(r"[\s<>/]+", doc)}
    texts = [c.caption for c in load_captions(dataset)]
    texts += [p.rejected + " " + p.question for p in load_preferences(dataset)]
    texts += [s.response() for s in load_split(dataset, "test")]
    words = {w for text in texts for w in re.split(r"[\s<>/]+", text)}
    assert words - known == set()


def test_vision_pretraining_set(dataset):
    images, targets = vision_pretraining_set(30, 32, seed=0)
    assert images.shape == (30, 3, 32, 32) and targets.shape == (30, len(ATTRIBUTE_NAMES))
    assert images.min() >= -1 and images.max() <= 1
    colours = targets[:, :4].sum(1)
    assert torch.equal(colours, targets[:, 4:7].sum(1))  # objects by colour == by shape
    digits = targets[1::3]  # round-robin: every third image is a digit pair
    assert torch.equal(digits[:, 9:].sum(1), torch.full((10,), 2.0))
    again, _ = vision_pretraining_set(30, 32, seed=0)
    assert torch.equal(images, again)
    test_images = [load_image(dataset, s.image) for s in load_split(dataset, "test")]
    test_batch = images_to_tensor(test_images, 32)
    assert not (images[:, None] == test_batch[None]).flatten(2).all(-1).any()
