"""AL-CoTD self-distillation (R1V): the current model writes the chains SFT then trains on.

For each sample, P = length_penalty(S_v, S_t, S_I) is the repetition penalty of its generation
(samples sharing a rounded P are generated together). A chain is accepted when its answer is the
gold answer and the response has the <think>/<answer> format (the rule check), and, with a judge,
when the judge's score reaches `judge_threshold`. Rejected samples are regenerated (a new seed
per attempt) up to `max_attempts`; what still fails is dropped or kept with its templated
reference chain (`on_failure`).

    scores = score_samples(samples, vision_fn, text_fn, integration_fn)
    result = distill(model, tokenizer, samples, pixels, scores, settings)
    result.samples      # the distilled train split (reasoning = the accepted <think> chain)
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from r1vflow.data.alcotd import (
    Scorer,
    combined_difficulty,
    difficulty_buckets,
    length_penalty,
    spearman,
)
from r1vflow.data.schema import Sample
from r1vflow.eval.grading import extract_answer, format_ok, is_correct
from r1vflow.models.families import encode_pixels, fixed_image_tokens
from r1vflow.models.families.images import ImageBatch, Images, stack_images
from r1vflow.models.generate import Completion, generate_completions

__all__ = ["DistillResult", "DistillSettings", "Scores", "distill", "fixed_penalty_comparison",
           "question_only_probe", "score_samples"]

# judge(samples, images ([N,3,H,W] or an ImageBatch of N), responses) -> scores on 0..1
Judge = Callable[[list[Sample], Images, list[str]], list[float]]


@dataclass(frozen=True)
class Scores:
    """Per-sample S_v, S_t, S_I (each [N], in [0, 1])."""

    vision: list[float]
    text: list[float]
    integration: list[float]


@dataclass(frozen=True)
class DistillSettings:
    alpha: float
    beta: float
    gamma: float
    max_attempts: int
    temperature: float
    max_new_tokens: int
    batch_size: int
    on_failure: Literal["drop", "template"]
    seed: int
    judge_threshold: float = 0.5
    penalty_decimals: int = 2  # P is rounded to batch samples of equal penalty together


@dataclass
class DistillResult:
    samples: list[Sample]
    records: list[dict] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def score_samples(samples: list[Sample], vision: Scorer, text: Scorer,
                  integration: Scorer) -> Scores:
    """Run the three scorers; each must return one value in [0, 1] per sample."""
    out = {}
    for name, fn in (("vision", vision), ("text", text), ("integration", integration)):
        values = [float(v) for v in fn(samples)]
        if len(values) != len(samples) or any(not 0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"AL-CoTD {name} scorer must return {len(samples)} values in "
                             f"[0, 1], got {values[:5]}...")
        out[name] = values
    return Scores(**out)


def question_only_probe(model, tokenizer, image_size: int, max_new_tokens: int,
                        batch_size: int) -> Scorer:
    """S_v with necessity measured: the model answers each question with a blank image;
    answered right -> the image was not needed (necessity 0). S_v = 0.5 * necessity + 0.5 *
    the rule's visual load. The blank image is zeros on the tiny path, and a black PIL image
    through the family's image processor otherwise."""
    from r1vflow.data.alcotd import vision_rule

    def probe(samples: list[Sample]) -> list[float]:
        blank = _blank_images(model, len(samples), image_size)
        groups = generate_completions(model, tokenizer, [s.question for s in samples], blank,
                                      max_new_tokens, batch_size)
        loads = [2 * v - 1 for v in vision_rule(samples)]  # vision_rule = 0.5 + 0.5 * load
        return [0.5 * (not is_correct(extract_answer(g[0].text), s.answer)) + 0.5 * load
                for g, s, load in zip(groups, samples, loads, strict=True)]

    return probe


def _blank_images(model, n: int, image_size: int) -> Images:
    """n blank images for `model`: zeros [n,3,S,S] on the tiny path, else black S x S RGB
    images encoded by its family (an ImageBatch)."""
    if fixed_image_tokens(model) is not None:
        return torch.zeros(n, 3, image_size, image_size)
    from PIL import Image

    black = [Image.new("RGB", (image_size, image_size)) for _ in range(n)]
    return stack_images(list(encode_pixels(model, black, image_size)))


def _take(pixels: Images, index: list[int]) -> Images:
    """The images at `index`, in that order ([k,3,S,S] or an ImageBatch of k)."""
    items = pixels.items if isinstance(pixels, ImageBatch) else pixels
    return stack_images([items[i] for i in index])


def _generate(model, tokenizer, samples, pixels, index: list[int], penalties: list[float],
              settings: DistillSettings, seed: int) -> dict[int, Completion]:
    """One completion per sample in `index`, each at its own (rounded) penalty."""
    by_penalty: dict[float, list[int]] = defaultdict(list)
    for i in index:
        by_penalty[round(penalties[i], settings.penalty_decimals)].append(i)
    out: dict[int, Completion] = {}
    for penalty, group in sorted(by_penalty.items()):
        groups = generate_completions(
            model, tokenizer, [samples[i].question for i in group], _take(pixels, group),
            settings.max_new_tokens, settings.batch_size, temperature=settings.temperature,
            seed=seed, repetition_penalty=penalty)
        out.update({i: g[0] for i, g in zip(group, groups, strict=True)})
    return out


def _accept(completions: dict[int, Completion], samples, pixels, judge: Judge | None,
            threshold: float) -> set[int]:
    ok = {i for i, c in completions.items()
          if format_ok(c.text) and is_correct(extract_answer(c.text), samples[i].answer)}
    if judge is not None and ok:
        index = sorted(ok)
        scores = judge([samples[i] for i in index], _take(pixels, index),
                       [completions[i].text for i in index])
        ok = {i for i, s in zip(index, scores, strict=True) if s >= threshold}
    return ok


def _chain(text: str) -> str:
    return text.split("<think>", 1)[1].split("</think>", 1)[0].strip()


def distill(model, tokenizer, samples: Sequence[Sample], pixels: Images, scores: Scores,
            settings: DistillSettings, judge: Judge | None = None) -> DistillResult:
    """Self-distil chains for `samples` (images [N,3,H,W], or an ImageBatch of N for a
    family: `sample_pixels(..., model)`); see the module docstring."""
    if settings.max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {settings.max_attempts}")
    samples = list(samples)
    s = settings
    difficulty = [combined_difficulty(v, t, i, s.beta, s.gamma)
                  for v, t, i in zip(scores.vision, scores.text, scores.integration, strict=True)]
    penalties = [length_penalty(v, t, i, s.alpha, s.beta, s.gamma)
                 for v, t, i in zip(scores.vision, scores.text, scores.integration, strict=True)]
    accepted: dict[int, Completion] = {}
    attempts = [0] * len(samples)
    first: dict[int, Completion] = {}
    pending = list(range(len(samples)))
    for attempt in range(s.max_attempts):
        if not pending:
            break
        completions = _generate(model, tokenizer, samples, pixels, pending, penalties, s,
                                s.seed + 7919 * attempt)
        if attempt == 0:
            first = completions
        good = _accept(completions, samples, pixels, judge, s.judge_threshold)
        for i in pending:
            attempts[i] += 1
        accepted.update({i: completions[i] for i in good})
        pending = [i for i in pending if i not in good]
    out, records = [], []
    for i, sample in enumerate(samples):
        chain = accepted.get(i)
        if chain is not None:
            out.append(sample.model_copy(update={"reasoning": _chain(chain.text)}))
        elif s.on_failure == "template":
            out.append(sample)
        records.append({"id": sample.id, "s_v": scores.vision[i], "s_t": scores.text[i],
                        "s_i": scores.integration[i], "difficulty": difficulty[i],
                        "penalty": penalties[i], "attempts": attempts[i],
                        "accepted": chain is not None,
                        "chain_tokens": chain.num_tokens if chain else None,
                        "first_correct": i in first and is_correct(
                            extract_answer(first[i].text), sample.answer),
                        "first_tokens": first[i].num_tokens if i in first else None})
    return DistillResult(out, records, distill_metrics(records))


def distill_metrics(records: list[dict]) -> dict[str, float]:
    """acceptance_rate, mean accepted chain tokens per difficulty bucket (tertiles), the
    distribution of P, length_difficulty_spearman, attempts, and the adaptive first attempt's
    accuracy and length (for the fixed-penalty comparison)."""
    n = len(records)
    ok = [r for r in records if r["accepted"]]
    penalties = sorted(r["penalty"] for r in records)
    q = statistics.quantiles(penalties, n=4) if n >= 2 else [penalties[0]] * 3
    metrics = {"samples": float(n), "acceptance_rate": len(ok) / n,
               "dropped_or_templated": float(n - len(ok)),
               "attempts_mean": sum(r["attempts"] for r in records) / n,
               "penalty_min": penalties[0], "penalty_p25": q[0], "penalty_median": q[1],
               "penalty_p75": q[2], "penalty_max": penalties[-1],
               "penalty_mean": sum(penalties) / n,
               "adaptive_first_accuracy": sum(r["first_correct"] for r in records) / n,
               "adaptive_first_tokens_mean": sum(r["first_tokens"] or 0 for r in records) / n}
    if ok:
        buckets = difficulty_buckets([r["difficulty"] for r in records])
        for b in range(3):
            lengths = [r["chain_tokens"] for r, k in zip(records, buckets, strict=True)
                       if k == b and r["accepted"]]
            if lengths:
                metrics[f"chain_tokens_mean/bucket_{b}"] = sum(lengths) / len(lengths)
        metrics["length_difficulty_spearman"] = spearman(
            [r["difficulty"] for r in ok], [float(r["chain_tokens"]) for r in ok])
        metrics["chain_tokens_mean"] = sum(r["chain_tokens"] for r in ok) / len(ok)
    return metrics


def fixed_penalty_comparison(model, tokenizer, samples: Sequence[Sample], pixels: Images,
                             penalty: float, settings: DistillSettings) -> dict[str, float]:
    """Accuracy and mean completion tokens of one generation at a fixed penalty, on the same
    prompts with the same seed and temperature as the adaptive first attempt."""
    samples = list(samples)
    index = list(range(len(samples)))
    completions = _generate(model, tokenizer, samples, pixels, index, [penalty] * len(samples),
                            settings, settings.seed)
    right = [is_correct(extract_answer(completions[i].text), samples[i].answer) for i in index]
    return {"fixed_penalty": penalty, "fixed_accuracy": sum(right) / len(right),
            "fixed_tokens_mean": sum(c.num_tokens for c in completions.values()) / len(index)}
