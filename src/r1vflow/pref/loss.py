"""The MPO loss (R1V2): L = w_dpo * L_DPO + w_bco * L_BCO + w_nll * L_NLL(chosen).

Notation: B preference pairs. ``chosen_logps`` / ``rejected_logps`` [B] are the summed
log-probabilities of each response under the policy, ``ref_*`` [B] under the frozen reference,
``chosen_nll`` [B] the mean per-token negative log-likelihood of each chosen response. With

    c = beta * (chosen_logps - ref_chosen_logps)      (implicit reward of the chosen response)
    r = beta * (rejected_logps - ref_rejected_logps)  (implicit reward of the rejected one)

    L = mean_B( w_dpo * -logsigmoid(c - r)
              + w_bco * (-logsigmoid(c - delta) - logsigmoid(-(r - delta)))
              + w_nll * chosen_nll )

``delta`` is BCO's reward shift: a moving average of past batches' mean reward (c + r) / 2,
kept by `BCODelta` (the report: "a moving average of past rewards"; window or decay is config).

TRL's `DPOTrainer(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[...])` computes the
same sum with two differences of convention, both visible in tests/test_mpo_loss.py: TRL 1.16's
``bco_pair`` has no shift (delta = 0 always; earlier TRL versions kept a running mean), and its
``sft`` term is the mean NLL over all chosen tokens of the batch (token-weighted) where ours is
the mean over pairs of each response's mean (every pair weighs the same). With delta = 0 and
``chosen_nll`` filled with the batch's token-mean NLL the two losses are equal.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F

__all__ = ["BCODelta", "mpo_loss"]


def _check_shapes(**tensors: torch.Tensor) -> int:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 1 or first[0] == 0 or any(s != first for s in shapes.values()):
        raise ValueError(f"mpo_loss: every input must be the same 1-D shape [B] with B >= 1, "
                         f"got {shapes}")
    return first[0]


def mpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_nll: torch.Tensor,
    beta: float,
    w_dpo: float,
    w_bco: float,
    w_nll: float,
    delta: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The MPO loss (module docstring) and its statistics.

    All tensors [B]; the reference log-probs are detached. Returns (scalar loss, stats) with
    stats (Python floats, batch means): "loss/dpo", "loss/bco", "loss/nll" (unweighted terms),
    "rewards/chosen" (mean c), "rewards/rejected" (mean r), "rewards/margins" (mean c - r),
    "rewards/accuracy" (share of pairs with c > r), "rewards/mean" (mean (c + r) / 2, what
    `BCODelta.update` takes) and "bco_delta" (the delta used).
    """
    _check_shapes(chosen_logps=chosen_logps, rejected_logps=rejected_logps,
                  ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
                  chosen_nll=chosen_nll)
    if beta <= 0:
        raise ValueError(f"mpo_loss: beta must be > 0, got {beta}")
    if min(w_dpo, w_bco, w_nll) < 0 or w_dpo + w_bco + w_nll == 0:
        raise ValueError(f"mpo_loss: weights must be >= 0 and not all 0, got w_dpo={w_dpo}, "
                         f"w_bco={w_bco}, w_nll={w_nll}")
    c = beta * (chosen_logps - ref_chosen_logps.detach())
    r = beta * (rejected_logps - ref_rejected_logps.detach())
    dpo = -F.logsigmoid(c - r)
    bco = -F.logsigmoid(c - delta) - F.logsigmoid(-(r - delta))
    per_pair = w_dpo * dpo + w_bco * bco + w_nll * chosen_nll
    loss = per_pair.mean()
    with torch.no_grad():
        stats = {
            "loss/dpo": float(dpo.mean()), "loss/bco": float(bco.mean()),
            "loss/nll": float(chosen_nll.mean()),
            "rewards/chosen": float(c.mean()), "rewards/rejected": float(r.mean()),
            "rewards/margins": float((c - r).mean()),
            "rewards/accuracy": float((c > r).float().mean()),
            "rewards/mean": float(((c + r) / 2).mean()), "bco_delta": float(delta),
        }
    return loss, stats


class BCODelta:
    """BCO's shift: a moving average of past batches' mean reward (c + r) / 2.

    Exactly one of ``window`` (plain mean of the last ``window`` batch means) or ``decay``
    (exponential: d <- decay * d + (1 - decay) * x, started at the first x) is given. `value`
    is 0.0 before the first `update`; call `value` for a step's loss, then `update` with that
    step's "rewards/mean", so a batch never shifts itself.
    """

    def __init__(self, window: int | None = None, decay: float | None = None) -> None:
        if (window is None) == (decay is None):
            raise ValueError("BCODelta: give exactly one of window or decay")
        if window is not None and window < 1:
            raise ValueError(f"BCODelta: window must be >= 1, got {window}")
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ValueError(f"BCODelta: decay must be in [0, 1), got {decay}")
        self.decay = decay
        self._recent: deque[float] = deque(maxlen=window)
        self._ema: float | None = None

    @property
    def value(self) -> float:
        if self.decay is not None:
            return 0.0 if self._ema is None else self._ema
        return sum(self._recent) / len(self._recent) if self._recent else 0.0

    def update(self, batch_mean_reward: float) -> float:
        """Record one batch's mean reward; returns the new value."""
        x = float(batch_mean_reward)
        if self.decay is not None:
            self._ema = x if self._ema is None else self.decay * self._ema + (1 - self.decay) * x
        else:
            self._recent.append(x)
        return self.value

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume the shift exactly."""
        return {"recent": list(self._recent), "ema": self._ema}

    def load_state_dict(self, state: dict) -> None:
        self._recent.clear()
        self._recent.extend(float(v) for v in state["recent"])
        self._ema = None if state["ema"] is None else float(state["ema"])
