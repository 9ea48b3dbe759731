"""Brief pretraining of the tiny base models (tiny presets only).

On a cluster the vision encoder and the LLM come from a model store; on a laptop there is none,
so `bootstrap` builds them from scratch and gives each a short pretraining so that the later
stages (projector alignment, SFT, GRPO) start from parts that already know something:

- vision: regress scene attributes (object counts per colour / shape / side, digit classes)
  from the mean-pooled last-layer patch features (the same features the projector reads)
  through a linear head, which is then discarded;
- LLM: causal language modelling on text-only documents about the same scenes.

Both run in r1vflow.train.loop's loop with batches drawn with replacement
(`PretrainSettings.steps` of them, from a generator seeded with `seed`); this module holds
their loss steps and the settings built from the `bootstrap` config section.

    pretrain_vision(vision, images, targets, vision_settings(exp.bootstrap, seed))
    pretrain_llm(llm, tokenizer, texts, llm_settings(exp.bootstrap, seed))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from r1vflow.models.processing import IGNORE_INDEX
from r1vflow.train.loop import LoopSettings, StepCallback, StepOutput, Trainer, run_loop


@dataclass(frozen=True, kw_only=True)
class PretrainSettings(LoopSettings):
    """The loop's settings for pretraining: `steps` batches drawn with replacement (required),
    and the token budget of an LLM document."""

    steps: int
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    max_length: int = 160


def vision_settings(cfg: Any, seed: int, progress: bool = True) -> PretrainSettings:
    """The vision pretraining's settings from a `bootstrap` config section."""
    return PretrainSettings(steps=cfg.vision_steps, lr=cfg.vision_lr,
                            batch_size=cfg.vision_batch_size, seed=seed, progress=progress)


def llm_settings(cfg: Any, seed: int, steps: int | None = None,
                 progress: bool = True) -> PretrainSettings:
    """The LLM pretraining's settings from a `bootstrap` config section (`steps`: another
    number of steps than `llm_steps`, e.g. the substitute LLM's)."""
    return PretrainSettings(steps=cfg.llm_steps if steps is None else steps, lr=cfg.lr,
                            batch_size=cfg.batch_size, max_length=cfg.max_length, seed=seed,
                            progress=progress)


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


class _VisionTrainer(Trainer[int]):
    name = "pretrain vision"
    report_epoch = False

    def __init__(self, images: torch.Tensor, goal: torch.Tensor) -> None:
        super().__init__()
        self.images, self.goal = images, goal

    def loss(self, model: torch.nn.Module, batch: list[int]) -> StepOutput:
        index = torch.tensor(batch)
        return StepOutput(F.mse_loss(model(self.images[index]), self.goal[index]),
                          weight=float(len(batch)))


def pretrain_vision(
    vision: PreTrainedModel,
    images: torch.Tensor,
    targets: torch.Tensor,
    settings: PretrainSettings,
    on_step: StepCallback | None = None,
) -> dict[str, float]:
    """Train `vision` in place to predict standardized `targets` [n,D] from `images` [n,3,H,W].

    MSE loss; `settings.steps` random batches of `settings.batch_size`. Returns loss (mean of
    the last 10 steps), first_loss, steps, seconds. The linear head is dropped afterwards.
    `on_step(step, {"loss", "lr", "grad_norm"})` runs after every step.
    """
    if images.shape[0] != targets.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {targets.shape[0]} target rows")
    torch.manual_seed(settings.seed)
    probe = _AttributeProbe(vision, targets.shape[1])
    trainer = _VisionTrainer(images, standardize(targets.float()))
    result = run_loop(probe, range(images.shape[0]), settings, trainer, on_step=on_step)
    vision.eval()
    return result.summary


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


class _LMTrainer(Trainer[str]):
    name = "pretrain llm"
    report_epoch = False

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        super().__init__()
        self.tokenizer, self.max_length = tokenizer, max_length

    def loss(self, model: torch.nn.Module, batch: list[str]) -> StepOutput:
        inputs = encode_texts(self.tokenizer, batch, self.max_length)
        return StepOutput(model(**inputs).loss, weight=float(len(batch)),
                          tokens=int(inputs["attention_mask"].sum()))

    def summary(self, seconds: float) -> dict[str, float]:
        return {**super().summary(seconds), "tokens_per_s": self.state.tokens / seconds}


def pretrain_llm(
    llm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    settings: PretrainSettings,
    on_step: StepCallback | None = None,
) -> dict[str, float]:
    """Train `llm` in place with the causal LM loss on `settings.steps` random batches of
    `texts`, each cut to `settings.max_length` tokens.

    Returns loss (mean of the last 10 steps), first_loss, steps, seconds, tokens_per_s.
    `on_step(step, {"loss", "lr", "grad_norm"})` runs after every step.
    """
    if not texts:
        raise ValueError("pretrain_llm got no texts")
    trainer = _LMTrainer(tokenizer, settings.max_length)
    return run_loop(llm, texts, settings, trainer, on_step=on_step).summary
