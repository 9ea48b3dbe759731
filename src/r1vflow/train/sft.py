"""Supervised fine-tuning of the VLM on (question, response, image) triples.

Used by projector alignment (R1V stage 1: projector only), by iterative SFT (R1V stage 2) and
by any stage that needs teacher forcing. The loss is the mean cross-entropy over the assistant
response tokens and its closing `<|im_end|>`; prompt, image placeholders and padding carry
label -100. Which parts train is decided before the call with `set_trainable`. The loop is
r1vflow.train.loop's (shuffled epochs, batches split across ranks, resume); this module is
the loss step.

    set_trainable(model, {"projector", "llm"})
    settings = SFTSettings.from_section(exp.sft)         # or SFTSettings(epochs=3, ...)
    result = train_sft(model, tokenizer, items, settings)
    result.summary["loss"]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from r1vflow.models.devices import place_batch
from r1vflow.models.families import fixed_image_tokens
from r1vflow.models.families.images import image_texts, stack_images
from r1vflow.models.processing import IGNORE_INDEX, encode_sft_batch
from r1vflow.train.checkpoint import PhaseCheckpoint
from r1vflow.train.loop import (
    LoopSettings,
    StepCallback,
    StepOutput,
    Trainer,
    TrainResult,
    run_loop,
)

__all__ = ["SFTSettings", "SftItem", "StepCallback", "eval_loss", "train_sft"]

SftItem = tuple[str, str, Any]  # question, response, pixel_values [3,H,W] or an ImageInput


@dataclass(frozen=True, kw_only=True)
class SFTSettings(LoopSettings):
    """The loop's settings and the token budget of a training sequence."""

    max_length: int = 192


def _batches(items: Sequence[SftItem], batch_size: int) -> Iterator[list[SftItem]]:
    for start in range(0, len(items), batch_size):
        yield list(items[start:start + batch_size])


def _encode(
    tokenizer: PreTrainedTokenizerBase, chunk: list[SftItem], n_image: int | None,
    max_length: int,
) -> dict[str, torch.Tensor]:
    pixels = stack_images([pixels for _, _, pixels in chunk])
    batch = encode_sft_batch(tokenizer, [(q, r) for q, r, _ in chunk],
                             image_texts(pixels, n_image), max_length)
    batch["pixel_values"] = pixels
    return batch


class _SFT(Trainer[SftItem]):
    name = "sft"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, n_image: int | None,
                 max_length: int) -> None:
        super().__init__()
        self.tokenizer, self.n_image, self.max_length = tokenizer, n_image, max_length

    def loss(self, model: torch.nn.Module, batch: list[SftItem]) -> StepOutput:
        """The model's own loss: the mean over the response tokens (the shifted labels that
        are not -100), so the rank's share weighs its token count."""
        inputs = place_batch(_encode(self.tokenizer, batch, self.n_image, self.max_length),
                             model)
        loss = model(**inputs).loss
        targets = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
        return StepOutput(loss, weight=float(targets),
                          tokens=int(inputs["attention_mask"].sum()))

    def summary(self, seconds: float) -> dict[str, float]:
        tokens = self.state.tokens
        return {**super().summary(seconds), "tokens": float(tokens),
                "tokens_per_s": tokens / seconds}


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[SftItem],
    settings: SFTSettings,
    *,
    on_step: StepCallback | None = None,
    checkpoint: PhaseCheckpoint | None = None,
) -> TrainResult:
    """Train `model` in place on `items` for `settings.epochs` shuffled epochs (AdamW, warmup +
    cosine; r1vflow.train.loop).

    `settings.batch_size` is the global batch: under torchrun each rank trains on its share of
    it. The summary: loss (mean of the last 10 steps), first_loss, steps, seconds, tokens
    (non-padding tokens this rank processed) and tokens_per_s. `on_step(step, metrics)` with
    metrics {"loss","lr","grad_norm","epoch"} (means over the ranks) runs after every optimizer
    step (1-based step). The model is left in eval mode (and, after ZeRO-3, with its full
    weights gathered back). With `checkpoint` (r1vflow.train.checkpoint) the loop resumes from
    its newest checkpoint and saves as it says.
    """
    if not items:
        raise ValueError("train_sft got no training items")
    trainer = _SFT(tokenizer, fixed_image_tokens(model), settings.max_length)
    return run_loop(model, items, settings, trainer, on_step=on_step, checkpoint=checkpoint)


@torch.no_grad()
def eval_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[SftItem],
    batch_size: int,
    max_length: int,
) -> float:
    """Mean cross-entropy per response token over all `items` (token-weighted, not per batch)."""
    if not items:
        raise ValueError("eval_loss got no items")
    was_training = model.training
    model.eval()
    n_image = fixed_image_tokens(model)
    total, count = 0.0, 0
    for chunk in _batches(items, batch_size):
        batch = place_batch(_encode(tokenizer, chunk, n_image, max_length), model)
        labels = batch.pop("labels")
        logits = model(**batch).logits[:, :-1].float()
        targets = labels[:, 1:]
        total += float(
            F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
        )
        count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / count
