"""Supervised fine-tuning of the VLM on (question, response, image) triples.

Used by projector alignment (R1V stage 1: projector only), by iterative SFT (R1V stage 2) and
by any stage that needs teacher forcing. The loss is the mean cross-entropy over the assistant
response tokens and its closing `<|im_end|>`; prompt, image placeholders and padding carry
label -100. Which parts train is decided before the call with `set_trainable`.

    set_trainable(model, {"projector", "llm"})
    stats = train_sft(model, tokenizer, items, epochs=3, batch_size=16, lr=1e-3, ...)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from r1vflow.models.distributed import rank_world
from r1vflow.models.families import fixed_image_tokens
from r1vflow.models.families.images import (
    image_kwargs,
    image_texts,
    stack_images,
    token_type_kwargs,
)
from r1vflow.models.processing import IGNORE_INDEX, encode_sft_batch
from r1vflow.train.checkpoint import (
    PhaseCheckpoint,
    restore_epoch_position,
    save_epoch_position,
)
from r1vflow.train.engine import Backend, TrainEngine, training_progress

SftItem = tuple[str, str, Any]  # question, response, pixel_values [3,H,W] or an ImageInput
StepCallback = Callable[[int, dict[str, float]], None]


def _batches(
    items: Sequence[SftItem], batch_size: int, generator: torch.Generator | None
) -> Iterator[list[SftItem]]:
    order = (
        torch.randperm(len(items), generator=generator).tolist()
        if generator is not None
        else list(range(len(items)))
    )
    for start in range(0, len(order), batch_size):
        yield [items[i] for i in order[start : start + batch_size]]


def _shard(chunk: list[SftItem]) -> list[SftItem]:
    """This rank's share of a global batch under torch.distributed (all of it otherwise).

    Every rank gets at least one item so that ZeRO's collective calls stay in step.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return chunk
    rank, world = rank_world()
    return chunk[rank::world] or chunk[:1]


def _encode(
    tokenizer: PreTrainedTokenizerBase, chunk: list[SftItem], n_image: int | None,
    max_length: int,
) -> dict[str, torch.Tensor]:
    pixels = stack_images([pixels for _, _, pixels in chunk])
    batch = encode_sft_batch(tokenizer, [(q, r) for q, r, _ in chunk],
                             image_texts(pixels, n_image), max_length)
    batch["pixel_values"] = pixels
    return batch


def _to(batch: dict, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The batch on the model's device; floating tensors (images) in its dtype."""
    param = next(model.parameters())
    images = image_kwargs(batch.pop("pixel_values"), param.device, param.dtype)
    batch = {key: value.to(param.device) for key, value in batch.items()}
    return {**batch, **images, **token_type_kwargs(model, batch["input_ids"])}


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[SftItem],
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_ratio: float,
    max_length: int,
    seed: int,
    on_step: StepCallback | None = None,
    progress: bool = True,
    backend: Backend = "torch",
    zero_stage: int = 0,
    checkpoint: PhaseCheckpoint | None = None,
) -> dict[str, float]:
    """Train `model` in place on `items` for `epochs` shuffled epochs (AdamW, warmup + cosine).

    `batch_size` is the global batch: under torchrun each rank trains on its share of it.
    Returns loss (mean of the last 10 steps, this rank), first_loss, steps, seconds, tokens
    (non-padding tokens this rank processed) and tokens_per_s. `on_step(step, metrics)` with
    metrics {"loss","lr","grad_norm","epoch"} runs after every optimizer step (1-based step).
    The model is left in eval mode (and, after ZeRO-3, with its full weights gathered back).
    With `checkpoint` (r1vflow.train.checkpoint) the loop resumes from its newest checkpoint
    (engine, RNG, shuffling generator, position in the epoch, losses) and saves as it says.
    """
    if not items:
        raise ValueError("train_sft got no training items")
    n_image = fixed_image_tokens(model)
    steps_per_epoch = math.ceil(len(items) / batch_size)
    engine = TrainEngine(
        model,
        lr=lr,
        weight_decay=weight_decay,
        warmup_ratio=warmup_ratio,
        total_steps=epochs * steps_per_epoch,
        backend=backend,
        zero_stage=zero_stage,
    )
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    tokens, start = 0, time.perf_counter()
    first_epoch, skip, restored = restore_epoch_position(checkpoint, engine, generator)
    losses, tokens = list(restored.get("losses", [])), int(restored.get("tokens", 0))
    total = epochs * steps_per_epoch
    with training_progress(progress) as bar:
        task = bar.add_task("sft", total=total, completed=len(losses), loss=float("nan"),
                            tok_s=0.0)
        for epoch in range(first_epoch, epochs):
            epoch_generator = generator.get_state()  # before this epoch's permutation
            for index, chunk in enumerate(_batches(items, batch_size, generator)):
                if epoch == first_epoch and index < skip:
                    continue  # done before the restart
                batch = _to(_encode(tokenizer, _shard(chunk), n_image, max_length), engine.module)
                loss = engine.model(**batch).loss
                stats = engine.step(loss)
                losses.append(float(loss.detach()))
                tokens += int(batch["attention_mask"].sum())
                tok_s = tokens / (time.perf_counter() - start)
                bar.update(task, advance=1, loss=losses[-1], tok_s=tok_s)
                if on_step is not None:
                    on_step(len(losses), {"loss": losses[-1], **stats, "epoch": float(epoch)})
                save_epoch_position(checkpoint, engine, len(losses), total, epoch, index + 1,
                                    epoch_generator, losses=losses, tokens=tokens)
    engine.release().eval()
    seconds = time.perf_counter() - start
    return {
        "loss": sum(losses[-10:]) / len(losses[-10:]),
        "first_loss": losses[0],
        "steps": float(len(losses)),
        "seconds": seconds,
        "tokens": float(tokens),
        "tokens_per_s": tokens / seconds,
    }


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
    for chunk in _batches(items, batch_size, generator=None):
        batch = _to(_encode(tokenizer, chunk, n_image, max_length), model)
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
