"""Brief pretraining of the tiny base models (tiny presets only).

On a cluster the vision encoder and the LLM come from a model store; on a laptop there is none,
so `bootstrap` builds them from scratch and gives each a short pretraining so that the later
stages (projector alignment, SFT, GRPO) start from parts that already know something:

- vision: regress scene attributes (object counts per colour / shape / side, digit classes)
  from the mean-pooled last-layer patch features (the same features the projector reads)
  through a linear head, which is then discarded;
- LLM: causal language modelling on text-only documents about the same scenes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from r1vflow.models.processing import IGNORE_INDEX
from r1vflow.train.engine import TrainEngine, training_progress
from r1vflow.train.sft import StepCallback


class _AttributeProbe(torch.nn.Module):
    """Vision tower + linear head: pixels [B,3,H,W] -> attribute predictions [B,D]."""

    def __init__(self, vision: PreTrainedModel, num_targets: int) -> None:
        super().__init__()
        self.vision = vision
        self.head = torch.nn.Linear(vision.config.hidden_size, num_targets)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vision(pixel_values, output_hidden_states=True).hidden_states[-1]
        return self.head(hidden.mean(dim=1))


def standardize(targets: torch.Tensor) -> torch.Tensor:
    """Per-column z-scores of targets [n,D]; constant columns become 0."""
    mean = targets.mean(dim=0, keepdim=True)
    std = targets.std(dim=0, keepdim=True).clamp_min(1e-6)
    return (targets - mean) / std


def _summary(losses: list[float], start: float, tokens: int | None = None) -> dict[str, float]:
    seconds = time.perf_counter() - start
    stats = {
        "loss": sum(losses[-10:]) / len(losses[-10:]),
        "first_loss": losses[0],
        "steps": float(len(losses)),
        "seconds": seconds,
    }
    if tokens is not None:
        stats["tokens_per_s"] = tokens / seconds
    return stats


def pretrain_vision(
    vision: PreTrainedModel,
    images: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.05,
    progress: bool = True,
    on_step: StepCallback | None = None,
) -> dict[str, float]:
    """Train `vision` in place to predict standardized `targets` [n,D] from `images` [n,3,H,W].

    MSE loss; random batches of `batch_size` for `steps` steps. Returns loss (mean of the last
    10 steps), first_loss, steps, seconds. The linear head is dropped afterwards.
    `on_step(step, {"loss", "lr", "grad_norm"})` runs after every step.
    """
    if images.shape[0] != targets.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {targets.shape[0]} target rows")
    torch.manual_seed(seed)
    probe = _AttributeProbe(vision, targets.shape[1])
    goal = standardize(targets.float())
    engine = TrainEngine(probe, lr, weight_decay, warmup_ratio, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    start = time.perf_counter()
    with training_progress(progress) as bar:
        task = bar.add_task("pretrain vision", total=steps, loss=float("nan"), tok_s=0.0)
        for _ in range(steps):
            index = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
            loss = F.mse_loss(engine.model(images[index]), goal[index])
            stats = engine.step(loss)
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(len(losses), {"loss": losses[-1], **stats})
            bar.update(task, advance=1, loss=losses[-1])
    vision.eval()
    return _summary(losses, start)


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> dict[str, torch.Tensor]:
    """Right-padded LM batch: each text + eos, cut to max_length; labels -100 on padding."""
    rows = [
        (tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id])[:max_length]
        for t in texts
    ]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def pretrain_llm(
    llm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    steps: int,
    lr: float,
    batch_size: int,
    max_length: int,
    seed: int,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.05,
    progress: bool = True,
    on_step: StepCallback | None = None,
) -> dict[str, float]:
    """Train `llm` in place with the causal LM loss on random batches of `texts`.

    Returns loss (mean of the last 10 steps), first_loss, steps, seconds, tokens_per_s.
    `on_step(step, {"loss", "lr", "grad_norm"})` runs after every step.
    """
    if not texts:
        raise ValueError("pretrain_llm got no texts")
    engine = TrainEngine(llm, lr, weight_decay, warmup_ratio, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    tokens, start = 0, time.perf_counter()
    with training_progress(progress) as bar:
        task = bar.add_task("pretrain llm", total=steps, loss=float("nan"), tok_s=0.0)
        for _ in range(steps):
            index = torch.randint(0, len(texts), (batch_size,), generator=generator).tolist()
            batch = encode_texts(tokenizer, [texts[i] for i in index], max_length)
            loss = engine.model(**batch).loss
            stats = engine.step(loss)
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(len(losses), {"loss": losses[-1], **stats})
            tokens += int(batch["attention_mask"].sum())
            bar.update(
                task, advance=1, loss=losses[-1], tok_s=tokens / (time.perf_counter() - start)
            )
    llm.eval()
    return _summary(losses, start, tokens)
