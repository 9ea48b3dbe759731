"""Generate a model's responses to benchmark items and score them (``r1vflow eval run`` and the
evaluate stage's ``evaluate.benchmarks``).

Every image of an item reaches the model through its family's own image input (the image
processor it carries: Qwen-VL's dynamic resolution within its min/max_pixels, InternVL's tiles,
a Llava tower's square; the tiny Llava path without a processor: a square of ``image_size``),
in the order the question places them: an image the prompt refers to with a marker
(``<image 2>`` in MMMU, ``<image1>`` in MathVision, ``<image_1>`` in OlympiadBench) stands where
the marker first stands; the others go before the question, as in training. Text-only items
(MATH-500, AIME) get no image. Each row records ``image_tokens``, the image tokens the model
read for it, and ``images``.

`generate_requests` is the one function that generates: batched on the generation engine
(r1vflow.generation: vLLM where it serves the model, else transformers' ``generate``).
"""

from __future__ import annotations

import io
import json
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from r1vflow.data.io import atomic_write_bytes
from r1vflow.eval.benchmarks import Benchmark, BenchmarkDataError, Item
from r1vflow.eval.benchmarks.common import MAX_PIXELS_PER_ITEM
from r1vflow.eval.benchmarks.score import score_predictions

IMAGE_SLOT = "\x00image\x00"  # where an image goes in a Request's text (never in real text)
_MARKER = re.compile(r"<image[ _]?(\d+)>")
# (requests done, requests in all, tokens generated so far, seconds so far)
OnBatch = Callable[[int, int, int, float], None]


@dataclass(frozen=True)
class Request:
    """One prompt: the user turn's text with `IMAGE_SLOT` where each image goes, and the
    images (RGB PIL) in slot order."""

    id: str
    text: str
    images: list


@dataclass(frozen=True)
class Generated:
    """The responses to one Request and the image tokens its prompt held."""

    completions: list
    image_tokens: int


def item_images(item: Item) -> list[Image.Image]:
    """The item's images decoded to RGB, in the item's order. Every header is read and the
    item's pixels summed against MAX_PIXELS_PER_ITEM before any image is decoded (a 17 KB PNG
    can declare 12000x12000)."""
    opened, total = [], 0
    try:
        for number, data in enumerate(item.images, start=1):
            try:
                with warnings.catch_warnings():  # PIL's bomb warning: the bound below decides
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    opened.append(Image.open(io.BytesIO(data)))
            except (OSError, Image.DecompressionBombError) as err:
                raise BenchmarkDataError(f"item {item.id}: image {number} does not decode "
                                         f"({err})") from None
            total += opened[-1].width * opened[-1].height
            if total > MAX_PIXELS_PER_ITEM:
                raise BenchmarkDataError(
                    f"item {item.id}: image {number} is {opened[-1].width}x"
                    f"{opened[-1].height}; the item's images reach {total:,} pixels, over the "
                    f"bound of {MAX_PIXELS_PER_ITEM:,}")
        images = []
        for number, image in enumerate(opened, start=1):
            try:
                images.append(image.convert("RGB"))
            except OSError as err:
                raise BenchmarkDataError(f"item {item.id}: image {number} does not decode "
                                         f"({err})") from None
        return images
    finally:
        for image in opened:
            image.close()


def request_of(item: Item) -> Request:
    """The item as a Request: image k where the prompt first refers to it (``<image k>``,
    ``<image_k>``, ``<imagek>``), images it never refers to before the question."""
    images = item_images(item)
    placed: list[int] = []

    def place(match: re.Match) -> str:
        number = int(match.group(1))
        if 1 <= number <= len(images) and number not in placed:
            placed.append(number)
            return IMAGE_SLOT
        return match.group(0)  # a repeated or unknown reference stays text

    text = _MARKER.sub(place, item.prompt)
    rest = [n for n in range(1, len(images) + 1) if n not in placed]
    if rest:
        text = IMAGE_SLOT * len(rest) + "\n" + text
    return Request(item.id, text, [images[n - 1] for n in rest + placed])


def context_length(model) -> int | None:
    """The language model's maximum number of positions, when the config says."""
    text = getattr(model.config, "text_config", None) or model.config
    return getattr(text, "max_position_embeddings", None)


def encode_request_images(model, images: list, image_size: int | None) -> list:
    """The request's images as the family's `ImageInput`s (placeholder text included)."""
    from r1vflow.models.families import encode_pixels, family_of, fixed_image_tokens
    from r1vflow.models.families.images import ImageInput

    if not images:
        return []
    fixed = fixed_image_tokens(model)
    if fixed is None:
        return list(encode_pixels(model, images, image_size or 0))
    size = image_size or model.config.vision_config.image_size  # the tiny Llava path
    pixels = encode_pixels(model, images, size)
    text = family_of(model).placeholder(fixed)
    return [ImageInput({"pixel_values": pixels[i:i + 1]}, text, images[i])
            for i in range(len(images))]


def _prompt_ids(tokenizer, request: Request, encoded: list) -> list[int]:
    pieces = request.text.split(IMAGE_SLOT)
    text = pieces[0] + "".join(e.text + piece for e, piece in zip(encoded, pieces[1:],
                                                                  strict=True))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
    return tokenizer.encode(prompt, add_special_tokens=False)


def _check_fits(model, request: Request, n_prompt: int, max_new_tokens: int) -> None:
    limit = context_length(model)
    if limit is not None and n_prompt + max_new_tokens > limit:
        raise BenchmarkDataError(
            f"item {request.id}: prompt ({n_prompt} tokens with its images) + max_new_tokens "
            f"= {n_prompt + max_new_tokens} tokens, over the model's context of {limit}; lower "
            "max_new_tokens or use a model with a longer context")


def _generate_batch(engine, model, tokenizer, requests: list[Request], sampling,
                    image_size: int | None) -> list[Generated]:
    """One engine call: every request's images through the family's encoding (in the order the
    question places them), its prompt with their placeholders."""
    encoded = [encode_request_images(model, r.images, image_size) for r in requests]
    prompts = [_prompt_ids(tokenizer, r, e) for r, e in zip(requests, encoded, strict=True)]
    for request, ids in zip(requests, prompts, strict=True):
        _check_fits(model, request, len(ids), sampling.max_new_tokens)
    groups = engine.generate(prompts, encoded, sampling)
    pad = model.config.image_token_id
    return [Generated(group, ids.count(pad)) for group, ids in zip(groups, prompts, strict=True)]


def generate_requests(model, tokenizer, requests: list[Request], max_new_tokens: int,
                      batch_size: int, temperature: float, samples: int = 1, seed: int = 0,
                      image_size: int | None = None, on_batch: OnBatch | None = None,
                      engine=None) -> list[Generated]:
    """``samples`` responses to every request, ``batch_size`` requests per engine call, on
    `engine` (r1vflow.generation, serving `model`'s weights; None: transformers on `model`):
    greedy at temperature 0, else plain temperature sampling, reproducible given ``seed``
    (batch k draws with seed + k; the global RNG untouched). ``image_size``: the tiny Llava
    path's square (None: its vision tower's). ``on_batch`` hears (done, total, tokens,
    seconds) after each batch."""
    from r1vflow.generation import Sampling, TransformersEngine

    if temperature == 0 and samples != 1:
        raise ValueError("greedy decoding (temperature=0) gives identical copies; use samples=1")
    engine = engine or TransformersEngine(model, tokenizer, batch_size)
    results: list[Generated] = []
    tokens, start = 0, time.monotonic()
    for first in range(0, len(requests), batch_size):
        sampling = Sampling(max_new_tokens, temperature, samples, seed + first)
        batch = _generate_batch(engine, model, tokenizer, requests[first:first + batch_size],
                                sampling, image_size)
        results += batch
        tokens += sum(c.num_tokens for g in batch for c in g.completions)
        if on_batch:
            on_batch(len(results), len(requests), tokens, time.monotonic() - start)
    return results


def generate_predictions(model, tokenizer, items: list[Item], image_size: int | None,
                         samples: int, max_new_tokens: int, batch_size: int, temperature: float,
                         seed: int = 0, on_batch: OnBatch | None = None,
                         engine=None) -> list[dict]:
    """``samples`` responses per item: rows ``{"id", "sample", "response", "tokens",
    "images", "image_tokens"}``."""
    requests = [request_of(item) for item in items]
    generated = generate_requests(model, tokenizer, requests, max_new_tokens, batch_size,
                                  temperature, samples, seed, image_size, on_batch, engine)
    return [{"id": r.id, "sample": k, "response": c.text, "tokens": c.num_tokens,
             "images": len(r.images), "image_tokens": g.image_tokens}
            for r, g in zip(requests, generated, strict=True)
            for k, c in enumerate(g.completions)]


def run_benchmark(name: str, bench: Benchmark, model, tokenizer, items: list[Item],
                  image_size: int | None, samples: int, max_new_tokens: int, batch_size: int,
                  temperature: float, seed: int = 0, on_batch: OnBatch | None = None,
                  engine=None) -> dict:
    """Generate (on `engine`, else transformers on `model`) and score: the
    `score_predictions` report (its items hold the responses)."""
    if not items:
        raise BenchmarkDataError(f"{name}: no items to run (empty split or subset?)")
    rows = generate_predictions(model, tokenizer, items, image_size, samples, max_new_tokens,
                                batch_size, temperature, seed, on_batch, engine)
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
    # JSON lines end at "\n" only: str.splitlines would also cut a response at the U+2028,
    # U+0085 or form feed a model may generate (written raw: ensure_ascii=False)
    for number, line in enumerate(text.split("\n"), start=1):
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
