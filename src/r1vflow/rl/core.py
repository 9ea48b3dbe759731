"""GRPO algorithm core (R1V2): group-relative advantages, the policy losses, k3 KL.

Pure torch functions on padded batches. Notation: N sequences (= prompts x group_size,
ordered group by group), T completion tokens per sequence (right-padded), V vocabulary size.
``mask`` [N, T] is 1 for completion tokens that count and 0 for padding (bool or float).

Aggregations (names as in verl):
- "token-mean": mean over all valid tokens of the batch (long answers weigh more).
- "seq-mean-token-mean": mean over each sequence's valid tokens, then over sequences
  (original GRPO; every response weighs the same). Sequences with no valid token are skipped.
- "seq-mean-token-sum-norm": sum over all valid tokens / (N x L) with L a constant token
  budget (`norm`, the generation's max_new_tokens): Dr. GRPO's normaliser, which neither
  favours short answers (as the per-sequence mean does) nor depends on the batch.

Policy losses are registered by name (`register_policy_loss`, `get_policy_loss`; the
`grpo.loss` setting): every one takes (logprobs, old_logprobs, advantages, mask, settings,
weights) and returns the loss and the share of valid tokens in the clipped region.
- "grpo": the clipped surrogate on per-token ratios pi/pi_old (PPO/GRPO; clip-higher when
  clip_high > clip_low), aggregated as `settings.aggregation`.
- "gspo": GSPO (Zheng et al. 2025): one ratio per sequence, s_i = exp(mean_t log(pi/pi_old)),
  clipped per sequence; in its token form s_i,t = sg[s_i] * pi_t / sg[pi_t] (same value, each
  token's gradient scaled by s_i), aggregated as `settings.aggregation`.
- "dr_grpo": the "grpo" surrogate aggregated with Dr. GRPO's constant normaliser (settings
  must say "seq-mean-token-sum-norm"; its advantages are not divided by the group std, which
  `grpo.loss: dr_grpo` sets through `grpo.scale_by_std`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

__all__ = [
    "POLICY_LOSSES",
    "Aggregation",
    "LossSettings",
    "PolicyLossOutput",
    "clip_fraction",
    "get_policy_loss",
    "group_advantages",
    "kl_k3",
    "masked_aggregate",
    "policy_loss",
    "register_policy_loss",
    "token_logprobs",
]

Aggregation = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
_AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO advantages A_i = (r_i - mean(group)) / (std(group) + eps).

    rewards: [N] with N = prompts x group_size, ordered group by group (the G responses of
    prompt 0, then of prompt 1, ...). std uses Bessel's correction (torch default, as TRL and
    verl). With ``scale_by_std=False`` returns r_i - mean(group) (Dr. GRPO).
    Returns [N] float tensor. A group of equal rewards gives zeros.
    """
    if rewards.dim() != 1:
        raise ValueError(
            f"group_advantages: rewards must be 1-D [N], got shape {tuple(rewards.shape)}"
        )
    if group_size < 2:
        raise ValueError(f"group_advantages: group_size must be >= 2, got {group_size}")
    n = rewards.shape[0]
    if n % group_size != 0:
        raise ValueError(
            f"group_advantages: {n} rewards is not a multiple of group_size={group_size}; "
            "pass group_size responses for every prompt"
        )
    grouped = rewards.float().view(-1, group_size)  # [P, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(n)


def _check_nt(name: str, t: torch.Tensor, shape: torch.Size) -> None:
    if t.shape != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)} [N, T]")


def masked_aggregate(
    values: torch.Tensor, mask: torch.Tensor, aggregation: Aggregation = "seq-mean-token-mean",
    norm: int | None = None,
) -> torch.Tensor:
    """Reduce per-token ``values`` [N, T] over valid tokens (``mask`` [N, T]) to a scalar;
    `norm`: the constant token budget L of "seq-mean-token-sum-norm" (sum / (N x L))."""
    if aggregation not in _AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {_AGGREGATIONS}")
    if aggregation == "seq-mean-token-sum-norm" and (norm is None or norm < 1):
        raise ValueError(f"aggregation seq-mean-token-sum-norm divides by N x norm (the token "
                         f"budget, max_new_tokens): give norm >= 1, got {norm}")
    _check_nt("mask", mask, values.shape)
    m = mask.to(values.dtype)
    per_seq_count = m.sum(dim=1)  # [N]
    if per_seq_count.sum() == 0:
        raise ValueError("mask has no valid tokens; nothing to aggregate")
    masked = torch.where(mask.bool(), values, torch.zeros_like(values))  # NaN/inf in padding ok
    if aggregation == "token-mean":
        return masked.sum() / m.sum()
    if aggregation == "seq-mean-token-sum-norm":
        return masked.sum() / (values.shape[0] * norm)
    has_tokens = per_seq_count > 0
    seq_means = masked.sum(dim=1)[has_tokens] / per_seq_count[has_tokens]
    return seq_means.mean()


def _ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor) -> torch.Tensor:
    return torch.exp(logprobs - old_logprobs)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: Aggregation = "seq-mean-token-mean",
    weights: torch.Tensor | None = None,
    norm: int | None = None,
) -> torch.Tensor:
    """Clipped surrogate loss (PPO/GRPO), to be minimised.

    logprobs, old_logprobs, mask: [N, T]; advantages: [N] (one per sequence, broadcast over
    tokens). Per token: -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) with
    ratio = exp(logprobs - old_logprobs); old_logprobs carry no gradient. `weights` [N, T]
    (no gradient) multiply each token's term: truncated importance sampling (`tis_weights`).
    Returns a scalar aggregated over valid tokens (see module docstring; `norm` for
    "seq-mean-token-sum-norm").
    """
    _check_shapes(logprobs, old_logprobs, advantages)
    return _clipped(_ratio(logprobs, old_logprobs.detach()), advantages, mask, clip_low,
                    clip_high, aggregation, weights, norm)


def _check_shapes(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                  advantages: torch.Tensor) -> None:
    _check_nt("old_logprobs", old_logprobs, logprobs.shape)
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"advantages has shape {tuple(advantages.shape)}, expected [{logprobs.shape[0]}] [N]"
        )


def _clipped(ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
             clip_low: float, clip_high: float, aggregation: Aggregation,
             weights: torch.Tensor | None, norm: int | None) -> torch.Tensor:
    """-min(ratio * A, clip(ratio) * A) per token [N, T], weighted, then aggregated."""
    adv = advantages.detach().to(ratio.dtype).unsqueeze(1)  # [N, 1]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)  # [N, T]
    if weights is not None:
        _check_nt("weights", weights, ratio.shape)
        per_token = per_token * weights.detach().to(per_token.dtype)
    return masked_aggregate(per_token, mask, aggregation, norm)


def tis_weights(trainer_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor,
                cap: float) -> torch.Tensor:
    """Truncated importance sampling (verl's and TRL's correction for the rollout engine's
    numerics): per token min(exp(trainer - rollout log-prob), cap). The samples came from the
    engine's distribution, the loss is the trainer's: the ratio reweights them, the cap bounds
    its variance. [N, T] -> [N, T], no gradient."""
    if cap <= 0:
        raise ValueError(f"tis cap must be > 0, got {cap}")
    _check_nt("rollout_logprobs", rollout_logprobs, trainer_logprobs.shape)
    return torch.exp(trainer_logprobs.detach() - rollout_logprobs).clamp(max=cap)


@torch.no_grad()
def clip_fraction(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> float:
    """Share of valid tokens where the clip is active (the token gets no gradient):
    A > 0 and ratio > 1 + clip_high, or A < 0 and ratio < 1 - clip_low.

    Shapes as in ``policy_loss``; returns a Python float in [0, 1] for logging.
    """
    return _active_share(_ratio(logprobs, old_logprobs), advantages, mask, clip_low, clip_high)


def _active_share(ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  clip_low: float, clip_high: float) -> float:
    adv = advantages.unsqueeze(1)
    active = ((adv > 0) & (ratio > 1.0 + clip_high)) | ((adv < 0) & (ratio < 1.0 - clip_low))
    return float(masked_aggregate(active.float(), mask, "token-mean"))


def kl_k3(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    aggregation: Aggregation = "seq-mean-token-mean",
    norm: int | None = None,
) -> torch.Tensor:
    """k3 estimator of KL(policy || reference): exp(ref - lp) - (ref - lp) - 1, >= 0.

    logprobs, ref_logprobs, mask: [N, T]. Returns a scalar aggregated like ``policy_loss``.
    """
    _check_nt("ref_logprobs", ref_logprobs, logprobs.shape)
    delta = ref_logprobs.detach() - logprobs
    per_token = torch.exp(delta) - delta - 1.0
    return masked_aggregate(per_token, mask, aggregation, norm)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token: log softmax(logits[n, t])[tokens[n, t]].

    logits: [N, T, V] already aligned with ``tokens`` [N, T] (i.e. logits at position t are the
    model's prediction for tokens[:, t]; the caller shifts). Computed in float32. Returns [N, T].
    """
    if logits.dim() != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"token_logprobs: logits {tuple(logits.shape)} must be [N, T, V] and tokens "
            f"{tuple(tokens.shape)} must be [N, T]"
        )
    logits = logits.float()
    picked = torch.gather(logits, dim=-1, index=tokens.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


# --------------------------------------------------------------------------- policy losses


@dataclass(frozen=True)
class LossSettings:
    """What a policy loss reads: the clip range (clip-higher when clip_high > clip_low), the
    aggregation, and the token budget L of "seq-mean-token-sum-norm" (max_new_tokens)."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    aggregation: Aggregation = "seq-mean-token-mean"
    max_new_tokens: int | None = None


class PolicyLossOutput(NamedTuple):
    """A policy loss's result: the scalar loss (to minimise) and, for logging, the share of
    valid tokens whose term is clipped (they get no gradient)."""

    loss: torch.Tensor
    clip_fraction: float


PolicyLoss = Callable[..., PolicyLossOutput]
POLICY_LOSSES: dict[str, PolicyLoss] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLoss], PolicyLoss]:
    """Decorator: register `fn(logprobs, old_logprobs, advantages, mask, settings,
    weights=None) -> PolicyLossOutput` under `name` (a name is registered once)."""

    def add(fn: PolicyLoss) -> PolicyLoss:
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered "
                             f"({POLICY_LOSSES[name].__qualname__})")
        POLICY_LOSSES[name] = fn
        return fn

    return add


def get_policy_loss(name: str) -> PolicyLoss:
    """The policy loss registered as `name`; ValueError naming the known ones otherwise."""
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown grpo.loss {name!r}; known policy losses: "
                         f"{', '.join(sorted(POLICY_LOSSES))}")
    return POLICY_LOSSES[name]


@register_policy_loss("grpo")
def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, settings: LossSettings,
              weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """The clipped surrogate on per-token ratios (`policy_loss`), as `settings` aggregate it."""
    loss = policy_loss(logprobs, old_logprobs, advantages, mask, settings.clip_low,
                       settings.clip_high, settings.aggregation, weights, settings.max_new_tokens)
    return PolicyLossOutput(loss, clip_fraction(logprobs.detach(), old_logprobs, advantages,
                                                mask, settings.clip_low, settings.clip_high))


@register_policy_loss("dr_grpo")
def dr_grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                 mask: torch.Tensor, settings: LossSettings,
                 weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """Dr. GRPO (Liu et al. 2025): the "grpo" surrogate, summed over tokens and divided by
    N x max_new_tokens; advantages (computed before) mean-centred, not divided by the std."""
    if settings.aggregation != "seq-mean-token-sum-norm" or settings.max_new_tokens is None:
        raise ValueError("dr_grpo divides the token sum by N x max_new_tokens: its settings "
                         "need aggregation 'seq-mean-token-sum-norm' and max_new_tokens "
                         f"(grpo.loss: dr_grpo sets them), got {settings}")
    return grpo_loss(logprobs, old_logprobs, advantages, mask, settings, weights)


@register_policy_loss("gspo")
def gspo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, settings: LossSettings,
              weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """GSPO: the sequence ratio s_i = exp(mean over valid t of (logprobs - old_logprobs)),
    clipped per sequence, in the token form log s_i,t = sg[log s_i] + lp_t - sg[lp_t]."""
    _check_shapes(logprobs, old_logprobs, advantages)
    _check_nt("mask", mask, logprobs.shape)
    valid = mask.bool()
    delta = torch.where(valid, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))
    seq_log_ratio = delta.sum(dim=1) / valid.sum(dim=1).clamp(min=1)  # [N]: log s_i
    ratio = torch.exp(seq_log_ratio.detach().unsqueeze(1) + logprobs - logprobs.detach())
    loss = _clipped(ratio, advantages, mask, settings.clip_low, settings.clip_high,
                    settings.aggregation, weights, settings.max_new_tokens)
    return PolicyLossOutput(loss, _active_share(ratio.detach(), advantages, mask,
                                                settings.clip_low, settings.clip_high))
