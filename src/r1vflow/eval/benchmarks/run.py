"""Generate a model's responses to benchmark items and score them (``r1vflow eval run`` and the
evaluate stage's ``evaluate.benchmarks``).

The transformers backend generates in batches (`r1vflow.models.generate`), on the model's device
(a GPU when the model was put on one). The VLM here takes one image per prompt: an item's first
image, or a mid-grey square for text-only benchmarks (MATH-500, AIME); items with several images
(some MMMU questions) are answered from the first only (a departure from the reports, whose
InternViT model tiles every image).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from r1vflow.data.io import atomic_write_bytes, images_to_tensor
from r1vflow.eval.benchmarks import Benchmark, BenchmarkDataError, Item
from r1vflow.eval.benchmarks.score import score_predictions

BLANK_GREY = (128, 128, 128)


def item_image(item: Item, image_size: int) -> Image.Image:
    """The item's first image as RGB, or a grey square when it has none."""
    if not item.images:
        return Image.new("RGB", (image_size, image_size), BLANK_GREY)
    try:
        with Image.open(io.BytesIO(item.images[0])) as image:
            return image.convert("RGB")
    except OSError as err:
        raise BenchmarkDataError(f"item {item.id}: its image does not decode ({err})") from None


def context_length(model) -> int | None:
    """The language model's maximum number of positions, when the config says."""
    text = getattr(model.config, "text_config", None) or model.config
    return getattr(text, "max_position_embeddings", None)


def _check_fits(model, tokenizer, items: list[Item], max_new_tokens: int) -> None:
    from r1vflow.models.processing import build_prompt
    from r1vflow.models.vlm import num_image_tokens

    limit = context_length(model)
    if limit is None:
        return
    n_image = num_image_tokens(model)
    for item in items:
        prompt = build_prompt(tokenizer, item.prompt, n_image)
        used = len(tokenizer.encode(prompt, add_special_tokens=False)) + max_new_tokens
        if used > limit:
            raise BenchmarkDataError(
                f"item {item.id}: prompt + max_new_tokens = {used} tokens, over the model's "
                f"context of {limit}; lower max_new_tokens or use a model with a longer context")


def generate_predictions(model, tokenizer, items: list[Item], image_size: int, samples: int,
                         max_new_tokens: int, batch_size: int, temperature: float,
                         seed: int = 0) -> list[dict]:
    """``samples`` responses per item: rows ``{"id", "sample", "response", "tokens"}``."""
    from r1vflow.models.generate import generate_completions

    _check_fits(model, tokenizer, items, max_new_tokens)
    pixels = images_to_tensor([item_image(item, image_size) for item in items], image_size)
    groups = generate_completions(model, tokenizer, [item.prompt for item in items], pixels,
                                  max_new_tokens, batch_size, temperature=temperature,
                                  num_return_sequences=samples, seed=seed)
    return [{"id": item.id, "sample": k, "response": c.text, "tokens": c.num_tokens}
            for item, group in zip(items, groups, strict=True) for k, c in enumerate(group)]


def run_benchmark(name: str, bench: Benchmark, model, tokenizer, items: list[Item],
                  image_size: int, samples: int, max_new_tokens: int, batch_size: int,
                  temperature: float, seed: int = 0) -> dict:
    """Generate and score: the `score_predictions` report (its items hold the responses)."""
    if not items:
        raise BenchmarkDataError(f"{name}: no items to run (empty split or subset?)")
    rows = generate_predictions(model, tokenizer, items, image_size, samples, max_new_tokens,
                                batch_size, temperature, seed)
    return score_predictions(name, bench, {item.id: item for item in items}, rows)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Rows as JSON lines, written atomically."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write_bytes(path, text.encode("utf-8"))


def read_predictions(path: Path) -> list[dict]:
    """``{"id", "response"}`` rows of a predictions file; a bad line names file and line."""
    if not path.is_file():
        raise BenchmarkDataError(f"{path}: no such predictions file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise BenchmarkDataError(f"{path}: not UTF-8 text (byte {err.start})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise BenchmarkDataError(f"{path}:{number}: not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise BenchmarkDataError(f'{path}:{number}: not a JSON object '
                                         '({"id": ..., "response": ...})')
            rows.append(row)
    return rows
