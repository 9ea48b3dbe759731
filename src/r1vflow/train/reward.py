"""Reward-model training: the pairwise (Bradley-Terry) loss on chosen/rejected pairs.

    loss = -log sigmoid(r_chosen - r_rejected), averaged over the pairs of a batch

Each step encodes B pairs as 2B right-padded sequences (chosen first, then rejected, each with
its image) and reads the rewards with one forward pass. Which parts of the VLM train is set
before the call with `set_trainable(model.vlm, parts)`; the value head always trains. After
training, `fit_calibration` anchors the 0..5 scale on held-out pairs' scores.

    set_trainable(rm.vlm, {"projector", "llm"})
    result = train_reward(rm, tokenizer, pairs, RewardSettings.from_section(exp.train_reward_model))

The loop is r1vflow.train.loop's (shuffled epochs, batches split across ranks, resume); this
module is the pairwise loss step.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from r1vflow.models.devices import place_batch
from r1vflow.models.families import fixed_image_tokens
from r1vflow.models.families.images import concat_images, image_texts, stack_images
from r1vflow.models.reward import RewardModel, ScoreCalibration, encode_reward_batch
from r1vflow.train.checkpoint import PhaseCheckpoint
from r1vflow.train.loop import (
    LoopSettings,
    StepCallback,
    StepOutput,
    Trainer,
    TrainResult,
    run_loop,
)

PairItem = tuple[str, str, str, torch.Tensor]  # question, chosen, rejected, pixel_values [3,H,W]


@dataclass(frozen=True, kw_only=True)
class RewardSettings(LoopSettings):
    """The loop's settings, the token budget of a sequence, and the loss's options:
    `nll_weight` x the chosen responses' mean NLL added (0: none), `cross_prompt`: the
    pairwise loss over all chosen x rejected combinations of a rank's share."""

    max_length: int = 192
    nll_weight: float = 0.0
    cross_prompt: bool = False


def pairwise_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, cross_prompt: bool = False
) -> torch.Tensor:
    """Mean of -log sigmoid(chosen - rejected) over the pairs; chosen, rejected [B] -> [].

    With `cross_prompt`, over all B x B combinations (chosen_i, rejected_j): every chosen
    response should outscore every rejected one, whichever question it answers.
    """
    if chosen.shape != rejected.shape:
        raise ValueError(
            f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} "
            "rewards must have the same shape"
        )
    if cross_prompt:
        return -F.logsigmoid(chosen[:, None] - rejected[None, :]).mean()
    return -F.logsigmoid(chosen - rejected).mean()


def pairwise_metrics(chosen: Sequence[float], rejected: Sequence[float]) -> dict[str, float]:
    """pairwise_accuracy (share with chosen > rejected; ties count as wrong), cross_accuracy
    (the same over all chosen x rejected combinations: how well one threshold separates good
    from bad responses across questions), the mean margin, and the mean/std (population) of
    the chosen and the rejected scores."""
    if len(chosen) != len(rejected) or not chosen:
        raise ValueError(
            f"need equally many chosen and rejected scores, got {len(chosen)} and {len(rejected)}"
        )
    wins = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    cross = (torch.tensor(chosen)[:, None] > torch.tensor(rejected)[None, :]).float().mean()
    return {
        "pairwise_accuracy": wins / len(chosen),
        "cross_accuracy": float(cross),
        "margin_mean": statistics.fmean(c - r for c, r in zip(chosen, rejected, strict=True)),
        "chosen_score_mean": statistics.fmean(chosen),
        "chosen_score_std": statistics.pstdev(chosen),
        "rejected_score_mean": statistics.fmean(rejected),
        "rejected_score_std": statistics.pstdev(rejected),
    }


def fit_calibration(
    chosen: Sequence[float], rejected: Sequence[float], low_quantile: float, high_quantile: float
) -> ScoreCalibration:
    """Anchor 0..5 on held-out scores: the `low_quantile` of the rejected scores maps to 0 and
    the `high_quantile` of the chosen scores to 5 (linear between, clipped).

    With the defaults (0.5, 0.5): 0 is a typical rejected response, 5 a typical chosen one, so
    tau = 5 keeps responses scored at least as high as the median good one. Raises ValueError
    when the anchors do not separate (the model does not rank chosen above rejected).
    """
    if not chosen or not rejected:
        raise ValueError("fit_calibration needs chosen and rejected scores")
    low = torch.quantile(torch.tensor(rejected, dtype=torch.float64), low_quantile).item()
    high = torch.quantile(torch.tensor(chosen, dtype=torch.float64), high_quantile).item()
    if not high > low:
        raise ValueError(
            f"cannot calibrate the reward model: the {high_quantile:.2f} quantile of the chosen "
            f"scores ({high:.4f}) is not above the {low_quantile:.2f} quantile of the rejected "
            f"ones ({low:.4f}); train it longer (train_reward_model.epochs / lr) or move the "
            "train_reward_model.calibration quantiles"
        )
    return ScoreCalibration(low=low, high=high)


def _encode_pairs(
    tokenizer: PreTrainedTokenizerBase, chunk: Sequence[PairItem], n_image: int | None,
    max_length: int,
) -> dict[str, torch.Tensor]:
    """2B sequences: the B chosen responses, then the B rejected ones, each with its image."""
    questions = [q for q, _, _, _ in chunk] * 2
    responses = [c for _, c, _, _ in chunk] + [r for _, _, r, _ in chunk]
    pixels = stack_images([p for *_, p in chunk])
    pixels = concat_images([pixels, pixels])
    batch = encode_reward_batch(tokenizer, questions, responses, image_texts(pixels, n_image),
                                max_length)
    batch["pixel_values"] = pixels
    return batch


def _pair_loss(model, batch: dict[str, Any], n_pairs: int, nll_weight: float,
               cross_prompt: bool) -> tuple[torch.Tensor, float]:
    """One batch of `_encode_pairs` (the n_pairs chosen rows, then the rejected ones): the
    pairwise loss (minus nll_weight x the chosen responses' mean log-likelihood) and the share
    of pairs ranked right."""
    pixels = batch.pop("pixel_values")  # images move in RewardModel.forward (ImageBatch or tensor)
    batch = {**place_batch(batch, model), "pixel_values": pixels}
    # the log-probability only when the loss uses it: under DDP every output the loss
    # ignores would leave its parameters waiting for a gradient
    out = model(**batch, return_logprob=nll_weight > 0)
    rewards, logprob = out if nll_weight > 0 else (out, None)
    chosen, rejected = rewards[:n_pairs], rewards[n_pairs:]
    loss = pairwise_loss(chosen, rejected, cross_prompt)
    if logprob is not None:  # keep the LM (and so the likelihood term) grounded
        loss = loss - nll_weight * logprob[:n_pairs].mean()
    return loss, float((chosen > rejected).float().mean())


class _Reward(Trainer[PairItem]):
    name = "reward"

    def __init__(self, tokenizer: PreTrainedTokenizerBase, n_image: int | None,
                 settings: RewardSettings) -> None:
        super().__init__()
        self.tokenizer, self.n_image, self.settings = tokenizer, n_image, settings

    def loss(self, model: torch.nn.Module, batch: list[PairItem]) -> StepOutput:
        s = self.settings
        encoded = _encode_pairs(self.tokenizer, batch, self.n_image, s.max_length)
        loss, accuracy = _pair_loss(model, encoded, len(batch), s.nll_weight, s.cross_prompt)
        return StepOutput(loss, {"accuracy": accuracy}, weight=float(len(batch)))

    def summary(self, seconds: float) -> dict[str, float]:
        last = self.state.history[-10:]
        return {"loss": statistics.fmean(h["loss"] for h in last),
                "accuracy": statistics.fmean(h["accuracy"] for h in last),
                "first_loss": self.state.history[0]["loss"],
                "steps": float(len(self.state.history)), "seconds": seconds}


def train_reward(
    model: RewardModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PairItem],
    settings: RewardSettings,
    *,
    on_step: StepCallback | None = None,
    checkpoint: PhaseCheckpoint | None = None,
) -> TrainResult:
    """Train `model` in place on `pairs` with the pairwise loss, `settings.batch_size` pairs per
    step (the global batch: under torchrun each rank takes its share), plus the options of
    `RewardSettings`.

    The summary: loss and accuracy (means over the last 10 steps), first_loss, steps, seconds.
    `on_step(step, {"loss","accuracy","lr","grad_norm","epoch"})` (means over the ranks) after
    each optimizer step. With `checkpoint` it resumes from and saves checkpoints
    (r1vflow.train.checkpoint). With `cross_prompt` over several ranks, the combinations are
    those within each rank's share.
    """
    if not pairs:
        raise ValueError("train_reward got no pairs")
    trainer = _Reward(tokenizer, fixed_image_tokens(model.vlm), settings)
    return run_loop(model, pairs, settings, trainer, on_step=on_step, checkpoint=checkpoint)
