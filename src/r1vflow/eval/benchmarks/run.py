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

`generate_requests` is the one function that generates (transformers ``model.generate``,
batched, on the model's device); the generation engine of the vLLM issue replaces its body.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from r1vflow.data.io import atomic_write_bytes
from r1vflow.eval.benchmarks import Benchmark, BenchmarkDataError, Item
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
    """The item's images decoded to RGB, in the item's order."""
    images = []
    for number, data in enumerate(item.images, start=1):
        try:
            with Image.open(io.BytesIO(data)) as image:
                images.append(image.convert("RGB"))
        except OSError as err:
            raise BenchmarkDataError(f"item {item.id}: image {number} does not decode "
                                     f"({err})") from None
    return images


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


def _left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


def _check_fits(model, request: Request, n_prompt: int, max_new_tokens: int) -> None:
    limit = context_length(model)
    if limit is not None and n_prompt + max_new_tokens > limit:
        raise BenchmarkDataError(
            f"item {request.id}: prompt ({n_prompt} tokens with its images) + max_new_tokens "
            f"= {n_prompt + max_new_tokens} tokens, over the model's context of {limit}; lower "
            "max_new_tokens or use a model with a longer context")


def _generate_batch(model, tokenizer, requests: list[Request], options: dict, n: int,
                    image_size: int | None) -> list[Generated]:
    """One ``model.generate`` call: every request's images through the family's encoding,
    its prompt with their placeholders, repeated ``n`` times (tiles and patches cannot go
    through generate's own num_return_sequences expansion)."""
    from r1vflow.models.families.images import ImageBatch, image_kwargs, token_type_kwargs
    from r1vflow.models.generate import decode_completion

    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    encoded = [encode_request_images(model, r.images, image_size) for r in requests]
    prompts = [_prompt_ids(tokenizer, r, e) for r, e in zip(requests, encoded, strict=True)]
    for request, ids in zip(requests, prompts, strict=True):
        _check_fits(model, request, len(ids), options["max_new_tokens"])
    ids, mask = _left_padded([p for p in prompts for _ in range(n)], tokenizer.pad_token_id)
    inputs = [i for e in encoded for _ in range(n) for i in e]
    pixels = image_kwargs(ImageBatch(tuple(inputs)), device, dtype) if inputs else {}
    sequences = model.generate(
        input_ids=ids.to(device), attention_mask=mask.to(device), **pixels,
        **token_type_kwargs(model, ids.to(device)), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, use_cache=True,
        suppress_tokens=[model.config.image_token_id, tokenizer.pad_token_id], **options)
    rows = [decode_completion(tokenizer, row) for row in sequences[:, ids.shape[1]:].tolist()]
    pad = model.config.image_token_id
    return [Generated(rows[i * n:(i + 1) * n], prompts[i].count(pad))
            for i in range(len(requests))]


def generate_requests(model, tokenizer, requests: list[Request], max_new_tokens: int,
                      batch_size: int, temperature: float, samples: int = 1, seed: int = 0,
                      image_size: int | None = None,
                      on_batch: OnBatch | None = None) -> list[Generated]:
    """``samples`` responses to every request, ``batch_size`` requests per ``generate`` call:
    greedy at temperature 0, else plain temperature sampling, reproducible given ``seed``
    (the global RNG untouched). ``image_size``: the tiny Llava path's square (None: its
    vision tower's). ``on_batch`` hears (done, total, tokens, seconds) after each batch."""
    from r1vflow.models.generate import sampling_options

    if temperature == 0 and samples != 1:
        raise ValueError("greedy decoding (temperature=0) gives identical copies; use samples=1")
    options = {"max_new_tokens": max_new_tokens, **sampling_options(temperature)}
    was_training, results, tokens, start = model.training, [], 0, time.monotonic()
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for first in range(0, len(requests), batch_size):
                batch = requests[first:first + batch_size]
                results += _generate_batch(model, tokenizer, batch, options, samples,
                                           image_size)
                tokens += sum(c.num_tokens for g in results[first:] for c in g.completions)
                if on_batch:
                    on_batch(len(results), len(requests), tokens, time.monotonic() - start)
    finally:
        model.train(was_training)
    return results


def generate_predictions(model, tokenizer, items: list[Item], image_size: int | None,
                         samples: int, max_new_tokens: int, batch_size: int, temperature: float,
                         seed: int = 0, on_batch: OnBatch | None = None) -> list[dict]:
    """``samples`` responses per item: rows ``{"id", "sample", "response", "tokens",
    "images", "image_tokens"}``."""
    requests = [request_of(item) for item in items]
    generated = generate_requests(model, tokenizer, requests, max_new_tokens, batch_size,
                                  temperature, samples, seed, image_size, on_batch)
    return [{"id": r.id, "sample": k, "response": c.text, "tokens": c.num_tokens,
             "images": len(r.images), "image_tokens": g.image_tokens}
            for r, g in zip(requests, generated, strict=True)
            for k, c in enumerate(g.completions)]


def run_benchmark(name: str, bench: Benchmark, model, tokenizer, items: list[Item],
                  image_size: int | None, samples: int, max_new_tokens: int, batch_size: int,
                  temperature: float, seed: int = 0, on_batch: OnBatch | None = None) -> dict:
    """Generate and score: the `score_predictions` report (its items hold the responses)."""
    if not items:
        raise BenchmarkDataError(f"{name}: no items to run (empty split or subset?)")
    rows = generate_predictions(model, tokenizer, items, image_size, samples, max_new_tokens,
                                batch_size, temperature, seed, on_batch)
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
