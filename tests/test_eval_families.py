"""Benchmark items through each family's own image input: `r1vflow eval run` for a tiny
checkpoint of every family, every image of an item in the order its question places them, and
the image tokens each prediction row records. Checkpoints are tiny random ones built here in
each family's published layout and imported as a user would."""

from __future__ import annotations

import io
import json

import pytest
import torch
from bench_data import write_mathvista
from typer.testing import CliRunner

from r1vflow.cli import app
from r1vflow.cli.evaluation import progress_line
from r1vflow.eval.benchmarks import Item, mmmu
from r1vflow.eval.benchmarks.run import IMAGE_SLOT, generate_predictions, request_of
from r1vflow.models.families.fixtures import build_checkpoint, build_composition_parts
from r1vflow.models.importer import import_checkpoint, import_composition
from r1vflow.models.io import load_model
from r1vflow.models.tokenizer import load_tokenizer

from conftest import random_image

FAMILIES = ("llava", "qwen2_5_vl", "qwen3_vl", "internvl", "internvl_chat")
# Image tokens of one 12x12 picture, by hand: llava's SigLIP tower 32/8 -> 4x4 patches, all
# kept = 16; Qwen2.5-VL 12 -> 28 (patch 14 x merge 2), under min_pixels 56x56 -> 4x4 patches,
# 2x2 merged = 4; Qwen3-VL 12 -> 32, under min_pixels 64x64 -> 4x4 patches = 4; InternVL: a
# square picture is one 28px tile of image_seq_length 1 (internvl_chat: 28/14 = 2x2 patches,
# pixel shuffle 0.5 -> 1).
TOKENS_12PX = {"llava": 16, "qwen2_5_vl": 4, "qwen3_vl": 4, "internvl": 1, "internvl_chat": 1}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-families")
    made = {f: import_checkpoint(build_checkpoint(f, root / "src" / f), root / f)
            for f in FAMILIES if f != "llava"}
    parts = build_composition_parts(root / "src" / "parts")
    made["llava"] = import_composition(parts["vision"], parts["llm"], root / "llava")["base_model"]
    return made


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_run_works_for_every_family(models, family, tmp_path):
    data = tmp_path / "MathVista"
    write_mathvista(data, [
        {"pid": str(i), "question": "How many?", "query": "How many?", "answer": "3",
         "question_type": "free_form", "answer_type": "integer", "task": "figure question "
         "answering", "skills": ["arithmetic"], "color": (40 * i, 0, 0)} for i in range(3)])
    out, pred = tmp_path / "o.json", tmp_path / "p.jsonl"
    result = CliRunner().invoke(app, [
        "eval", "run", "--model", str(models[family]), "--benchmark", "mathvista", "--data",
        str(data), "--max-new-tokens", "4", "--batch-size", "2", "--json", str(out),
        "--predictions", str(pred)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["n"] == 3
    assert [(r["id"], r["images"], r["image_tokens"]) for r in report["items"]] == [
        (str(i), 1, TOKENS_12PX[family]) for i in range(3)]
    assert "mathvista: 2/3 items" in result.output and "mathvista: 3/3 items" in result.output
    assert "tokens/s, ETA" in result.output


def _spy(model) -> list[dict]:
    """Record the keyword arguments of every `model.generate` call."""
    calls, generate = [], model.generate

    def spy(**kwargs):
        calls.append(kwargs)
        return generate(**kwargs)

    model.generate = spy
    return calls


def _runs(ids: list[int], token: int) -> list[int]:
    """Lengths of the runs of `token` in `ids`, in order."""
    runs, current = [], 0
    for i in [*ids, None]:
        if i == token:
            current += 1
        elif current:
            runs, current = [*runs, current], 0
    return runs


def _two_image_item() -> tuple[Item, list]:
    """An MMMU item whose question shows image 2 before image 1, of different sizes."""
    first, second = random_image(32, 32, 1), random_image(40, 96, 2)
    question = "Is <image 2> wider than <image 1>?"
    return Item(id="validation_Art_1", question=question,
                prompt=mmmu.prompt_of(question, ["yes", "no"], "multiple-choice"),
                images=[_png(first), _png(second)], answer="A",
                fields={"options": ["yes", "no"], "question_type": "multiple-choice"}), [
        second, first]


def test_two_images_reach_qwen_in_the_questions_order(models):
    model, tokenizer = load_model(models["qwen2_5_vl"]), load_tokenizer(models["qwen2_5_vl"])
    calls = _spy(model)
    item, in_order = _two_image_item()
    rows = generate_predictions(model, tokenizer, [item], None, 1, 3, 1, 0.0)
    expected = model.r1vflow_image_processor(images=in_order, return_tensors="pt")
    sent = calls[0]
    assert torch.equal(sent["image_grid_thw"], expected["image_grid_thw"])
    assert torch.equal(sent["pixel_values"], expected["pixel_values"])
    # 40x96 -> 56x112 -> 4x8 patches -> 8 tokens; 32x32 -> 56x56 -> 4 tokens: the processor's
    # own counts (grid / merge^2), image 2 first as the question places it
    counts = [int(g.prod()) // 4 for g in expected["image_grid_thw"]]
    assert counts == [8, 4]
    assert _runs(sent["input_ids"][0].tolist(), model.config.image_token_id) == counts
    assert rows[0]["images"] == 2 and rows[0]["image_tokens"] == 12


def test_two_images_reach_internvl_as_their_tiles_in_the_questions_order(models):
    model, tokenizer = load_model(models["internvl"]), load_tokenizer(models["internvl"])
    calls = _spy(model)
    item, in_order = _two_image_item()
    rows = generate_predictions(model, tokenizer, [item], None, 1, 3, 1, 0.0)
    expected = model.r1vflow_image_processor(images=in_order, return_tensors="pt")
    # 40x96: two 28px tiles side by side plus the thumbnail = 3 tiles; 32x32: 1 tile
    assert expected["num_patches"].tolist() == [3, 1]
    assert torch.equal(calls[0]["pixel_values"], expected["pixel_values"])
    assert _runs(calls[0]["input_ids"][0].tolist(), model.config.image_token_id) == [3, 1]
    assert rows[0]["image_tokens"] == 4


def test_request_places_each_image_where_the_prompt_first_refers_to_it():
    red, green, blue = (random_image(4, 4, s) for s in (1, 2, 3))
    item = Item(id="x", question="q", prompt="Is <image 3> like <image 1>? See <image 3>. "
                "<image 9>", images=[_png(red), _png(green), _png(blue)], answer="A")
    request = request_of(item)
    # image 2 is never referred to: before the question; a repeat or unknown number stays text
    assert request.text == (f"{IMAGE_SLOT}\nIs {IMAGE_SLOT} like {IMAGE_SLOT}? See <image 3>. "
                            "<image 9>")
    assert [im.tobytes() for im in request.images] == [im.tobytes() for im in (green, blue, red)]
    text_only = request_of(Item(id="t", question="1+1?", prompt="1+1?", images=[], answer="2"))
    assert (text_only.text, text_only.images) == ("1+1?", [])
    olympiad = request_of(Item(id="o", question="q", prompt="Find x in <image_1>.",
                               images=[_png(red)], answer="1"))
    assert olympiad.text == f"Find x in {IMAGE_SLOT}."


def test_progress_line():
    # 16 of 100 items in 24 s: 24/16 s an item, 84 left -> 126 s; 2,048 tokens / 24 s
    assert progress_line("mathvista", 16, 100, 2048, 24.0) == (
        "mathvista: 16/100 items, 2,048 tokens, 85.3 tokens/s, ETA 0:02:06")


def _processor_counts(model, family: str, expected: dict) -> list[int]:
    """Image tokens per image as the family's own processor output implies them."""
    if family.startswith("qwen"):
        merge = model.r1vflow_image_processor.merge_size
        return [int(g.prod()) // merge**2 for g in expected["image_grid_thw"]]
    if family.startswith("internvl"):
        return [int(n) * model.config.image_seq_length for n in expected["num_patches"]]
    return [TOKENS_12PX["llava"]] * len(expected["pixel_values"])  # a fixed square per image


@pytest.mark.parametrize("family", ["llava", "qwen3_vl", "internvl_chat"])
def test_two_images_reach_every_other_family_in_the_questions_order(models, family):
    model, tokenizer = load_model(models[family]), load_tokenizer(models[family])
    calls = _spy(model)
    item, in_order = _two_image_item()
    rows = generate_predictions(model, tokenizer, [item], None, 1, 3, 1, 0.0)
    expected = model.r1vflow_image_processor(images=in_order, return_tensors="pt")
    assert torch.equal(calls[0]["pixel_values"], expected["pixel_values"])
    counts = _processor_counts(model, family, expected)
    assert _runs(calls[0]["input_ids"][0].tolist(), model.config.image_token_id) == counts
    assert rows[0]["images"] == 2 and rows[0]["image_tokens"] == sum(counts)


def test_eval_run_errors_are_one_line(models, tmp_path):
    for args, message in (
            (["--data", str(tmp_path / "nowhere")], f"{tmp_path / 'nowhere'}: no such file"),
            (["--data", str(tmp_path), "--benchmark", "gsm8k"], "unknown benchmark 'gsm8k'")):
        result = CliRunner().invoke(app, ["eval", "run", "--model", str(models["qwen2_5_vl"]),
                                          "--benchmark", "mathvista", *args])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
