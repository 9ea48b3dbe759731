"""`r1vflow rollout check`: before a long GPU job, does the vLLM engine sample what the trainer
would?

The model is loaded once; a vLLM engine is built over it and filled by the weight sync GRPO
uses. With `perturb`, every weight then moves by a seeded random amount and is synced again (the
path of every optimizer step). Greedy completions of a few prompts with images of different
sizes (and text-only ones) are compared token for token with transformers' `generate` on the
same model, and vLLM's per-token log-probabilities with transformers' own. The check passes
when every prompt's greedy tokens match and the largest log-probability gap is under the
threshold; a weight the sync cannot place fails it, naming the weight.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from r1vflow.config.generation import GenerationConfig
from r1vflow.generation.base import Sampling, WeightSyncError
from r1vflow.generation.choose import choose_backend
from r1vflow.generation.hf import TransformersEngine

QUESTIONS = ("How many circles are there?", "What is 3 plus 4?",
             "Which shape is larger, the left or the right one?", "Describe the picture.")
SIZES = ((32, 32), (40, 56), (64, 48), (28, 28))


@dataclass
class CheckResult:
    model: str
    family: str
    perturbed: bool
    prompts: int
    greedy_match: float  # share of prompts whose greedy tokens match
    logprob_gap_max: float
    logprob_gap_mean: float
    threshold_match: float
    threshold_gap: float
    sync_seconds: float
    passed: bool
    mismatches: list[dict]

    def as_dict(self) -> dict:
        return asdict(self)


def _images(model, n: int) -> list:
    """n deterministic pictures of different sizes, encoded for `model`'s family."""
    from PIL import Image

    from r1vflow.models.families import encode_pixels, fixed_image_tokens
    from r1vflow.models.families.images import ImageInput

    pictures = []
    for i in range(n):
        height, width = SIZES[i % len(SIZES)]
        pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(i))
        pictures.append(Image.fromarray(pixels.numpy(), mode="RGB"))
    if fixed_image_tokens(model) is None:
        return list(encode_pixels(model, pictures, 32))
    side = model.config.vision_config.image_size
    tensors = encode_pixels(model, pictures, side)
    return [ImageInput({"pixel_values": tensors[i:i + 1]}, "", pictures[i])
            for i in range(n)]


def _prompts(model, tokenizer) -> tuple[list[list[int]], list[list]]:
    """Prompts with one image each, and (for a VLM) two text-only ones."""
    from r1vflow.models.generate import prompt_ids

    if getattr(model.config, "vision_config", None) is None:
        ids = [tokenizer.encode(q, add_special_tokens=False) for q in QUESTIONS]
        return ids, [[] for _ in ids]
    images = [[image] for image in _images(model, len(QUESTIONS))]
    with_images = [_as_tensor_row(row) for row in images]
    ids = prompt_ids(tokenizer, list(QUESTIONS), with_images, model.config)
    ids += prompt_ids(tokenizer, list(QUESTIONS[:2]), None, model.config)
    return ids, with_images + [[], []]


def _as_tensor_row(row: list) -> list:
    """The tiny Llava path reads `[3,S,S]` tensors (its placeholder is the fixed count)."""
    item = row[0]
    if item.text:
        return row
    return [item.tensors["pixel_values"][0]]


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.02) -> None:
    """Move every weight by scale x its own std x seeded noise (the size of a few steps)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            spread = param.float().std().item() if param.numel() > 1 else 1.0
            noise = torch.randn(param.shape, generator=generator) * scale * (spread or 1.0)
            param.add_(noise.to(param.dtype))


def compare(vllm_engine, model, tokenizer, max_new_tokens: int) -> tuple[float, float, float,
                                                                          list[dict]]:
    """(share of prompts with equal greedy tokens, largest and mean |log-prob gap| over the
    tokens both produced, the mismatching prompts)."""
    ids, images = _prompts(model, tokenizer)
    sampling = Sampling(max_new_tokens, logprobs=True)
    ours = vllm_engine.generate(ids, images, sampling)
    reference = TransformersEngine(model, tokenizer, batch_size=len(ids)).generate(
        ids, images, sampling)
    gaps: list[float] = []
    mismatches = []
    for i, (got, want) in enumerate(zip(ours, reference, strict=True)):
        got, want = got[0], want[0]
        if got.token_ids != want.token_ids:
            mismatches.append({"prompt": i, "vllm": got.token_ids, "transformers": want.token_ids})
        same = next((k for k, (a, b) in enumerate(zip(got.token_ids, want.token_ids,
                                                       strict=False)) if a != b),
                    min(got.num_tokens, want.num_tokens))
        gaps += [abs(a - b) for a, b in zip(got.logprobs[:same + 1], want.logprobs[:same + 1],
                                            strict=False)]
    match = 1 - len(mismatches) / len(ids)
    return match, max(gaps, default=0.0), sum(gaps) / max(len(gaps), 1), mismatches


def rollout_check(model_dir: Path, perturbed: bool = False, max_new_tokens: int = 24,
                  min_match: float = 1.0, max_gap: float = 1e-2,
                  settings: GenerationConfig | None = None) -> CheckResult:
    """Run the check on a saved model (see the module docstring). Raises ValueError when vLLM
    cannot serve the model and WeightSyncError when a weight cannot be placed."""
    from r1vflow.generation.vllm_engine import VLLMEngine
    from r1vflow.models.families import family_of
    from r1vflow.models.io import load_model
    from r1vflow.models.tokenizer import load_tokenizer

    settings = settings or GenerationConfig(backend="vllm")
    model, tokenizer = load_model(model_dir, "vlm").eval(), load_tokenizer(model_dir)
    choose_backend(settings.model_copy(update={"backend": "vllm"}), model.config)
    engine = VLLMEngine(model, tokenizer, settings)
    try:
        seconds = engine.sync_seconds
        if perturbed:
            perturb(model)
            seconds = engine.sync(model)
        match, gap, mean, mismatches = compare(engine, model, tokenizer, max_new_tokens)
    finally:
        engine.close()
    return CheckResult(str(model_dir), family_of(model).name, perturbed,
                       len(QUESTIONS) + (2 if hasattr(model.config, "vision_config") else 0),
                       match, gap, mean, min_match, max_gap, seconds,
                       match >= min_match and gap <= max_gap, mismatches)


__all__ = ["CheckResult", "WeightSyncError", "compare", "perturb", "rollout_check"]
