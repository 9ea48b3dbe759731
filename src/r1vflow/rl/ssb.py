"""Selective Sample Buffer (SSB, Skywork R1V2) against vanishing advantages.

When every response in a GRPO group is right (or every one wrong) the group's advantages are
all zero and carry no gradient. The SSB caches samples with non-zero advantage from earlier
steps and re-introduces them into later updates, drawn with probability proportional to
|advantage|. The paper gives no buffer size or replay ratio; both are arguments here.

Per step, the trainer:
  1. computes the batch's advantages,
  2. calls ``fill(advantages, batch_size, step)`` and replaces that many zero-advantage samples
     of the batch with the returned entries (their stored ``old_logprobs`` and ``advantage``
     are used in the loss, so the importance ratio corrects for the policy having moved),
  3. calls ``add(candidates, step)`` with this step's samples (zero-advantage ones are dropped).
Calling ``fill`` before ``add`` keeps a batch from replaying its own samples.

Eviction when full: oldest entries first (lowest ``step``), ties broken by lowest |advantage|,
so the buffer keeps the freshest samples, whose old log-probs are closest to the policy.

Offline mode: ``prefilter_prompts`` keeps the prompts whose group had non-zero advantage.
Deterministic given ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

if TYPE_CHECKING:  # the config section is only read (duck-typed): no pydantic import at run time
    from r1vflow.config import SSBConfig

__all__ = ["Candidate", "Entry", "FillResult", "SelectiveSampleBuffer", "prefilter_prompts"]


@dataclass(frozen=True)
class Candidate:
    """A rollout sample offered to the buffer. ``prompt`` and ``response`` are opaque payloads
    (e.g. token ids or text); ``old_logprobs`` [T] are the behaviour policy's log-probs."""

    prompt_id: Hashable
    prompt: Any
    response: Any
    old_logprobs: torch.Tensor
    advantage: float


@dataclass(frozen=True)
class Entry:
    """A buffered sample: a ``Candidate``'s fields plus the step it was added at."""

    prompt_id: Hashable
    prompt: Any
    response: Any
    old_logprobs: torch.Tensor
    advantage: float
    step: int


class FillResult(NamedTuple):
    """Entries to swap into the batch and statistics for logging."""

    entries: list[Entry]
    stats: dict[str, float]


class SelectiveSampleBuffer:
    """Buffer of non-zero-advantage samples, replayed by |advantage|-weighted sampling.

    Args:
        capacity: maximum number of entries kept.
        max_age_steps: entries older than this many steps (step - entry.step > max_age_steps)
            are dropped by ``expire`` (and at the start of ``fill``).
        target_effective_ratio: ``fill`` tops the batch's share of non-zero-advantage samples
            up to this value (0..1).
        max_replay_fraction: at most floor(max_replay_fraction * batch_size) replayed entries
            per batch (0..1).
        seed: seed of the sampling generator.
        eps: |advantage| <= eps counts as zero.
        remove_on_replay: drop entries from the buffer once replayed (default: keep them until
            they age out or are evicted).
    """

    def __init__(
        self,
        capacity: int,
        max_age_steps: int,
        target_effective_ratio: float,
        max_replay_fraction: float,
        seed: int = 0,
        eps: float = 1e-6,
        remove_on_replay: bool = False,
    ):
        if capacity < 1:
            raise ValueError(f"SelectiveSampleBuffer: capacity must be >= 1, got {capacity}")
        if max_age_steps < 0:
            raise ValueError(
                f"SelectiveSampleBuffer: max_age_steps must be >= 0, got {max_age_steps}"
            )
        for name, v in (
            ("target_effective_ratio", target_effective_ratio),
            ("max_replay_fraction", max_replay_fraction),
        ):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"SelectiveSampleBuffer: {name} must be in [0, 1], got {v}")
        self.capacity = capacity
        self.max_age_steps = max_age_steps
        self.target_effective_ratio = target_effective_ratio
        self.max_replay_fraction = max_replay_fraction
        self.eps = eps
        self.remove_on_replay = remove_on_replay
        self._rng = np.random.default_rng(seed)
        self._entries: list[Entry] = []

    @classmethod
    def from_config(cls, cfg: SSBConfig, seed: int = 0) -> SelectiveSampleBuffer:
        """The buffer a `grpo.ssb` config section describes (`enabled` and `prefilter` are
        the trainer's business, not the buffer's)."""
        return cls(cfg.capacity, cfg.max_age_steps, cfg.target_effective_ratio,
                   cfg.max_replay_fraction, seed=seed)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> list[Entry]:
        """A copy of the buffered entries."""
        return list(self._entries)

    def state_dict(self) -> dict[str, Any]:
        """The buffer's contents and sampling RNG as plain values (for a checkpoint); prompts
        are kept by `prompt_id` only and come back through `load_state_dict`'s `prompt_of`."""
        return {"rng": self._rng.bit_generator.state,
                "entries": [{"prompt_id": e.prompt_id, "response": e.response,
                             "old_logprobs": e.old_logprobs, "advantage": e.advantage,
                             "step": e.step} for e in self._entries]}

    def load_state_dict(self, state: dict[str, Any], prompt_of: Callable[[Any], Any]) -> None:
        """Restore `state_dict()`'s output; `prompt_of(prompt_id)` gives each entry's prompt."""
        self._rng.bit_generator.state = state["rng"]
        self._entries = [Entry(e["prompt_id"], prompt_of(e["prompt_id"]), e["response"],
                               e["old_logprobs"], float(e["advantage"]), int(e["step"]))
                         for e in state["entries"]]

    def add(self, samples: Sequence[Candidate], step: int) -> int:
        """Buffer the samples with |advantage| > eps (log-probs detached, on CPU), then evict
        oldest / lowest-|A| entries beyond capacity. Returns how many were added."""
        added = 0
        for s in samples:
            adv = float(s.advantage)
            if abs(adv) <= self.eps:
                continue
            lp = s.old_logprobs.detach().to("cpu").clone()
            self._entries.append(Entry(s.prompt_id, s.prompt, s.response, lp, adv, step))
            added += 1
        if len(self._entries) > self.capacity:
            # Keep the newest, then the largest |A|; sorted() is stable, so ties keep order.
            ranked = sorted(self._entries, key=lambda e: (e.step, abs(e.advantage)), reverse=True)
            keep = {id(e) for e in ranked[: self.capacity]}
            self._entries = [e for e in self._entries if id(e) in keep]
        return added

    def expire(self, step: int) -> int:
        """Drop entries with step - entry.step > max_age_steps. Returns how many were dropped."""
        before = len(self._entries)
        self._entries = [e for e in self._entries if step - e.step <= self.max_age_steps]
        return before - len(self._entries)

    def fill(self, batch_advantages: Sequence[float], batch_size: int, step: int) -> FillResult:
        """Entries to replace zero-advantage samples of the current batch.

        batch_advantages: [batch_size] advantages of the batch. Expires stale entries first.
        If the share of |A| > eps is below ``target_effective_ratio``, draws
        min(needed to reach the target, floor(max_replay_fraction * batch_size),
        zero-advantage samples in the batch, buffer size) entries without replacement with
        probability proportional to |advantage|. Stats: effective_ratio_before,
        effective_ratio_after, buffer_size, replay_fraction, replayed.
        """
        if batch_size < 1 or len(batch_advantages) != batch_size:
            raise ValueError(
                f"SelectiveSampleBuffer.fill: got {len(batch_advantages)} advantages for "
                f"batch_size={batch_size}; pass one advantage per batch sample"
            )
        self.expire(step)
        n_eff = sum(1 for a in batch_advantages if abs(float(a)) > self.eps)
        before = n_eff / batch_size
        k = 0
        if before < self.target_effective_ratio and self._entries:
            needed = math.ceil(self.target_effective_ratio * batch_size - 1e-9) - n_eff
            cap = math.floor(self.max_replay_fraction * batch_size + 1e-9)
            k = max(0, min(needed, cap, batch_size - n_eff, len(self._entries)))
        chosen: list[Entry] = []
        if k > 0:
            weights = np.array([abs(e.advantage) for e in self._entries], dtype=np.float64)
            idx = self._rng.choice(len(weights), size=k, replace=False, p=weights / weights.sum())
            chosen = [self._entries[i] for i in idx]
            if self.remove_on_replay:
                drop = {int(i) for i in idx}
                self._entries = [e for j, e in enumerate(self._entries) if j not in drop]
        stats = {
            "effective_ratio_before": before,
            "effective_ratio_after": (n_eff + k) / batch_size,
            "buffer_size": float(len(self._entries)),
            "replay_fraction": k / batch_size,
            "replayed": float(k),
        }
        return FillResult(chosen, stats)


def prefilter_prompts(
    prompt_ids: Sequence[Hashable],
    rewards: Sequence[float] | torch.Tensor,
    group_size: int,
    eps: float = 1e-6,
) -> list[Hashable]:
    """Offline SSB: keep the prompts whose group of responses had non-zero advantage.

    prompt_ids: [P]; rewards: [P * group_size], the G rewards of prompt 0, then of prompt 1, ...
    A prompt is kept when its rewards are not all equal (max - min > eps, i.e. std > 0).
    Returns the kept prompt ids in input order.
    """
    r = torch.as_tensor(rewards, dtype=torch.float64).flatten()
    if group_size < 1 or r.numel() != len(prompt_ids) * group_size:
        raise ValueError(
            f"prefilter_prompts: {r.numel()} rewards for {len(prompt_ids)} prompts with "
            f"group_size={group_size}; expected {len(prompt_ids) * group_size}"
        )
    if not prompt_ids:
        return []
    grouped = r.view(len(prompt_ids), group_size)
    spread = grouped.max(dim=1).values - grouped.min(dim=1).values
    return [pid for pid, s in zip(prompt_ids, spread.tolist(), strict=True) if s > eps]
