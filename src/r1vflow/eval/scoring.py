"""Score a model on data-set samples: generate, extract answers, grade (used by sft and evaluate)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from r1vflow.data.io import images_to_tensor, load_image
from r1vflow.data.schema import Sample
from r1vflow.eval.grading import pass_at_k, score_responses
from r1vflow.eval.hallucination import hallucination_rate


def sample_pixels(dataset_dir: Path, samples: list[Sample], image_size: int, model=None):
    """The samples' images as a batch: a [B,3,H,W] pixel tensor, or for `model` what its
    family reads (r1vflow.models.families.encode_pixels: a tensor or an ImageBatch)."""
    images = [load_image(dataset_dir, s.image) for s in samples]
    if model is None:
        return images_to_tensor(images, image_size)
    from r1vflow.models.families import encode_pixels
    from r1vflow.models.families.images import stack_images

    return stack_images(list(encode_pixels(model, images, image_size)))


def score_model(model, tokenizer, samples: list[Sample], dataset_dir: Path, image_size: int,
                max_new_tokens: int, batch_size: int, temperature: float = 0.0,
                num_samples: int = 1, seed: int = 0,
                engine=None) -> tuple[dict[str, float], list[str]]:
    """Accuracy (pass@1, averaged over `num_samples` when sampling), format rate, mean response
    length in characters and tokens, accuracy per task family, and the hallucination rate
    where the samples carry their scene (r1vflow.eval.hallucination). Returns (metrics, first
    response of each sample). `engine` (r1vflow.generation, serving `model`'s weights)
    generates when given; else transformers on `model`."""
    from r1vflow.models.generate import generate_completions

    pixels = sample_pixels(dataset_dir, samples, image_size, model)
    groups = generate_completions(
        engine or model, tokenizer, [s.question for s in samples], pixels, max_new_tokens,
        batch_size,
        temperature=temperature, num_return_sequences=num_samples, seed=seed)
    golds = [s.answer for s in samples for _ in range(num_samples)]
    texts = [c.text for group in groups for c in group]
    scored = score_responses(golds, texts)
    metrics = {
        "accuracy": scored["accuracy"],
        "format_rate": scored["format_rate"],
        "mean_response_chars": scored["mean_response_chars"],
        "mean_response_tokens": sum(c.num_tokens for g in groups for c in g) / len(texts),
    }
    by_family: dict[str, list[bool]] = defaultdict(list)
    for i, sample in enumerate(samples):
        by_family[sample.family].extend(scored["correct"][i * num_samples:(i + 1) * num_samples])
    for family, flags in sorted(by_family.items()):
        metrics[f"accuracy_{family}"] = sum(flags) / len(flags)
    halluc = hallucination_rate([s for s in samples for _ in range(num_samples)], texts)
    if halluc is not None:  # synthetic scenes: names objects or counts the image lacks
        metrics["hallucination_rate"] = halluc
    if num_samples > 1:
        correct_per_q = [sum(scored["correct"][i * num_samples:(i + 1) * num_samples])
                         for i in range(len(samples))]
        metrics[f"pass@{num_samples}"] = sum(
            pass_at_k(num_samples, c, num_samples) for c in correct_per_q) / len(samples)
    return metrics, [group[0].text for group in groups]
