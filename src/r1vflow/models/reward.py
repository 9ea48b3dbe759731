"""The multimodal reward model (Skywork-VL Reward): the VLM with a scalar value head.

The reward of (question, image, response) is a linear head on the last non-padding token's
final hidden state, the chat-formatted sequence being the same one SFT trains on (prompt with
`<image>` placeholders, response, `<|im_end|>`). The backbone stays a plain Llava directory.

Optionally (`likelihood_term`, a departure from the report) the reward adds w * the mean
log-probability of the response under the model's own LM head, w a learned scalar (init 1).
A tiny model learns to check "does the answer follow from the reasoning" into the last hidden
state only after hundreds of steps; its language model already knows, so this term makes the
reward model useful within a CPU budget (docs/recipe-stages.md has the numbers).

On disk a reward model is a VLM directory (`save_model`) plus two files:

    value_head.safetensors   linear.weight [1, hidden], linear.bias [1] (+ likelihood_weight [])
    reward_head.json         {"hidden_size": H, "likelihood_term": bool,
                              "calibration": {"low": a, "high": b} | null}

The calibration maps raw scores to R1V's 0..5 scale: 5 * (score - low) / (high - low), clipped
(fitted in r1vflow.train.reward.fit_calibration). `RewardScorer.score` is the batched entry
point used by iterative SFT and by GRPO's reward-model term.

    scorer = load_reward_scorer("runs/x/reward_model", batch_size=64, max_length=192)
    raw = scorer.score(questions, pixel_values, responses)        # list[float]
    scaled = scorer.score_0to5(questions, pixel_values, responses)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerBase

from r1vflow.models.devices import load_placed, model_device, run_device
from r1vflow.models.families import fixed_image_tokens
from r1vflow.models.families.images import (
    Images,
    image_kwargs,
    image_texts,
    token_type_kwargs,
)
from r1vflow.models.io import save_model
from r1vflow.models.processing import IGNORE_INDEX, ImageText, encode_sft_batch
from r1vflow.models.tokenizer import load_tokenizer

HEAD_WEIGHTS = "value_head.safetensors"
HEAD_CONFIG = "reward_head.json"
SCALE_MAX = 5.0


@dataclass(frozen=True)
class ScoreCalibration:
    """Raw score -> 0..5: `low` maps to 0, `high` to 5, linear between, clipped outside."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise ValueError(f"calibration needs high > low, got low={self.low} high={self.high}")

    def to_scale(self, scores: torch.Tensor) -> torch.Tensor:
        """[N] raw scores -> [N] scores in [0, 5]."""
        scaled = SCALE_MAX * (scores - self.low) / (self.high - self.low)
        return scaled.clamp(0.0, SCALE_MAX)


def mean_response_logprob(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """Mean log-probability of the response tokens, [B]: token t of input_ids [B,T] is scored
    by the logits [B,T,V] at position t-1; response_mask [B,T] marks the response tokens."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logp = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    mask = response_mask[:, 1:].float()
    return (token_logp * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


class ValueHead(torch.nn.Module):
    """hidden [B,H] (+ mean response log-probability [B]) -> reward [B]."""

    def __init__(self, hidden_size: int, likelihood_term: bool) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        self.likelihood_weight = torch.nn.Parameter(torch.ones(())) if likelihood_term else None

    def forward(self, pooled: torch.Tensor, logprob: torch.Tensor | None) -> torch.Tensor:
        reward = self.linear(pooled).squeeze(-1)
        if self.likelihood_weight is not None:
            reward = reward + self.likelihood_weight * logprob.to(reward.dtype)
        return reward


class RewardModel(torch.nn.Module):
    """Llava VLM + value head: (input_ids, attention_mask, response_mask [B,T], pixel_values
    [B,3,H,W]) -> rewards [B], read at each row's last non-padding token (right padding).

    With `likelihood_term`, a learned multiple of the response's mean log-probability under
    the model's own LM head is added to the head's output."""

    def __init__(self, vlm: LlavaForConditionalGeneration, likelihood_term: bool = False) -> None:
        super().__init__()
        self.vlm = vlm
        device, dtype = model_device(vlm)
        self.value_head = ValueHead(vlm.config.text_config.hidden_size, likelihood_term).to(
            device=device, dtype=dtype
        )

    @property
    def likelihood_term(self) -> bool:
        return self.value_head.likelihood_weight is not None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor,
        pixel_values: Images,
        return_logprob: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Rewards [B]; with return_logprob also the mean response log-probability [B].
        pixel_values: [B,3,H,W] or an ImageBatch of B images (moved to the model here)."""
        device, dtype = model_device(self.vlm)
        hidden = self.vlm.model(
            input_ids=input_ids, attention_mask=attention_mask,
            **image_kwargs(pixel_values, device, dtype),
            **token_type_kwargs(self.vlm, input_ids),
        ).last_hidden_state  # [B, T, H]
        last = attention_mask.sum(dim=1) - 1  # [B]
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, H]
        logprob = (
            mean_response_logprob(self.vlm.lm_head(hidden), input_ids, response_mask)
            if self.likelihood_term or return_logprob
            else None
        )
        rewards = self.value_head(pooled, logprob)
        return (rewards, logprob) if return_logprob else rewards


def encode_reward_batch(
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    responses: list[str],
    n_image_tokens: ImageText | Sequence[ImageText],
    max_length: int,
) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, response_mask [B, T] of chat prompt + response + end marker,
    right-padded; response_mask is 1 on the response and its end marker.

    A sequence longer than `max_length` loses the end of its response (as in SFT).
    """
    batch = encode_sft_batch(
        tokenizer, list(zip(questions, responses, strict=True)), n_image_tokens, max_length
    )
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "response_mask": (batch["labels"] != IGNORE_INDEX).long(),
    }


@torch.no_grad()
def reward_scores(
    model: RewardModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    pixel_values: torch.Tensor,
    responses: list[str],
    batch_size: int,
    max_length: int,
) -> list[float]:
    """Raw rewards of N (question, image [N,3,H,W], response) triples, in batches."""
    if not len(questions) == len(responses) == len(pixel_values):
        raise ValueError(
            f"reward_scores: {len(questions)} questions, {len(responses)} "
            f"responses and {len(pixel_values)} images; give one of each"
        )
    was_training = model.training
    model.eval()
    device, _ = model_device(model)
    n_image = fixed_image_tokens(model.vlm)
    scores: list[float] = []
    for start in range(0, len(questions), batch_size):
        stop = start + batch_size
        images = pixel_values[start:stop]
        batch = encode_reward_batch(
            tokenizer, questions[start:stop], responses[start:stop],
            image_texts(images, n_image), max_length
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch, pixel_values=images)
        scores += out.float().cpu().tolist()
    model.train(was_training)
    return scores


def save_reward_model(
    model: RewardModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    metadata: dict[str, Any],
    calibration: ScoreCalibration | None,
) -> Path:
    """Write the VLM (safetensors + metadata), the value head and its config to `out_dir`."""
    from r1vflow.storage.atomic import atomic_dir

    with atomic_dir(out_dir) as out:  # whole or not at all
        save_model(model.vlm, tokenizer, out, metadata)
        head = {k: v.detach().cpu().contiguous()
                for k, v in model.value_head.state_dict().items()}
        save_file(head, str(out / HEAD_WEIGHTS))
        config = {
            "hidden_size": model.value_head.linear.in_features,
            "likelihood_term": model.likelihood_term,
            "calibration": None
            if calibration is None
            else {"low": calibration.low, "high": calibration.high},
        }
        (out / HEAD_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return Path(out_dir)


def load_reward_model(model_dir: str | Path) -> tuple[RewardModel, ScoreCalibration | None]:
    """Load a directory written by `save_reward_model` (safetensors only)."""
    directory = Path(model_dir)
    config_path, weights = directory / HEAD_CONFIG, directory / HEAD_WEIGHTS
    for path in (config_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a reward model: {path.name} is missing")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is corrupted: {err}") from None
    model = RewardModel(load_placed(directory), bool(config.get("likelihood_term")))
    hidden = model.value_head.linear.in_features
    if config.get("hidden_size") != hidden:
        raise ValueError(
            f"{config_path}: hidden_size {config.get('hidden_size')} does not match "
            f"the VLM's {hidden}"
        )
    model.value_head.load_state_dict(load_file(str(weights), device=str(run_device())))
    calibration = config.get("calibration")
    return model.eval(), None if calibration is None else ScoreCalibration(**calibration)


@dataclass
class RewardScorer:
    """A loaded reward model ready to score batches of (question, image, response)."""

    model: RewardModel
    tokenizer: PreTrainedTokenizerBase
    calibration: ScoreCalibration | None
    batch_size: int = 64
    max_length: int = 256

    def score(
        self, questions: list[str], pixel_values: torch.Tensor, responses: list[str]
    ) -> list[float]:
        """Raw rewards, one per triple; pixel_values [N,3,H,W]."""
        return reward_scores(
            self.model,
            self.tokenizer,
            questions,
            pixel_values,
            responses,
            self.batch_size,
            self.max_length,
        )

    def score_0to5(
        self, questions: list[str], pixel_values: torch.Tensor, responses: list[str]
    ) -> list[float]:
        """Calibrated rewards on R1V's 0..5 scale (needs a calibrated model)."""
        if self.calibration is None:
            raise ValueError("this reward model has no calibration: it cannot score on 0..5")
        raw = torch.tensor(self.score(questions, pixel_values, responses))
        return self.calibration.to_scale(raw).tolist()


def load_reward_scorer(model_dir: str | Path, batch_size: int, max_length: int) -> RewardScorer:
    """`RewardScorer` over the reward model and tokenizer saved in `model_dir`."""
    model, calibration = load_reward_model(model_dir)
    return RewardScorer(model, load_tokenizer(model_dir), calibration, batch_size, max_length)
