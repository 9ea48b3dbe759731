"""MPO (R1V2): preference pairs, reference log-probs computed once, the shared training loop.

    refs = reference_logprobs(model, items, pad_id, batch_size)   # the start model, once
    result = train_mpo(model, items, refs, MPOSettings.from_section(exp.mpo), pad_id=pad_id)

Each optimizer step takes `batch_size` pairs (shuffled epochs; under torchrun each rank takes
its share), runs chosen and rejected responses through the policy in one forward
([chosen..., rejected...]), and minimises `mpo_loss` with BCO's shift from `BCODelta`, updated
after the step with the batch's mean reward (the mean over the ranks: every rank keeps the
same shift, the one a single process would). The reference is the start model: its log-probs
are computed before the first update, so no second copy of the model is held. An optional
`probe` (called every `probe_every` steps) measures the reward-model score and rule accuracy of
fresh samples; the monitor turns them into the "MPO threshold" stop (RM-vs-rule gap).

The loop is r1vflow.train.loop's; resume state is `MPOState` (the loop's state plus BCODelta's
and the monitor's), restored and saved through a `PhaseCheckpoint` with the engine, RNG states
and the data order position. `on_step(step, metrics)` runs after every optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from r1vflow.models.families.images import ImageInput, stack_images
from r1vflow.pref.loss import BCODelta, mpo_loss
from r1vflow.rl.batch import completion_logprobs, sequence_batch
from r1vflow.rl.monitor import RewardMonitor
from r1vflow.train.checkpoint import PhaseCheckpoint
from r1vflow.train.loop import (
    LoopSettings,
    StepCallback,
    StepOutput,
    Trainer,
    TrainResult,
    TrainState,
    run_loop,
)

__all__ = ["MPOResult", "MPOSettings", "MPOState", "PrefItem", "pair_logprobs",
           "reference_logprobs", "train_mpo"]

# probe() -> {"accuracy": rule accuracy, "format_rate": ..., "reward_model": RM score or absent}
Probe = Callable[[torch.nn.Module], dict[str, float]]
MPOResult = TrainResult  # what train_mpo returns (the one result type of the trainers)


@dataclass(frozen=True)
class PrefItem:
    """One tokenized preference pair: prompt ids (chat template with `<image>` placeholders),
    chosen and rejected completion ids (each ending with eos), image ([3,H,W] on the tiny
    path, a family's `ImageInput`, or None), and the rule that made the pair (for reporting)."""

    id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    pixel_values: torch.Tensor | ImageInput | None = None
    rule: str = ""


def pair_logprobs(model: torch.nn.Module, items: Sequence[PrefItem], pad_id: int):
    """One forward over [chosen..., rejected...] of B pairs.

    Returns chosen_logps [B], rejected_logps [B] (summed log-probs of each completion),
    chosen_nll [B] (mean per-token NLL of each chosen completion) and chosen_tokens [B].
    """
    prompts = [it.prompt_ids for it in items] * 2
    completions = [it.chosen_ids for it in items] + [it.rejected_ids for it in items]
    batch = sequence_batch(prompts, completions, pad_id)
    pixels = None
    if items[0].pixel_values is not None:
        pixels = stack_images([it.pixel_values for it in items] * 2)
    logprobs = completion_logprobs(model, batch, pixels)  # [2B, T]
    mask = batch["completion_mask"].to(logprobs.device, logprobs.dtype)
    sums = (logprobs * mask).sum(dim=1)
    counts = mask.sum(dim=1)
    b = len(items)
    return sums[:b], sums[b:], -sums[:b] / counts[:b], counts[:b]


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, items: Sequence[PrefItem], pad_id: int,
                       batch_size: int) -> torch.Tensor:
    """[N, 2] summed log-probs (chosen, rejected) of every pair under `model`, computed once
    before training (the model is the reference: MPO starts from it)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(items), batch_size):
        chosen, rejected, _, _ = pair_logprobs(model, items[start:start + batch_size], pad_id)
        out.append(torch.stack([chosen, rejected], dim=1).float().cpu())
    model.train(was_training)
    return torch.cat(out)


@dataclass(frozen=True, kw_only=True)
class MPOSettings(LoopSettings):
    """The loop's settings and the loss's: beta, the weights of its DPO, BCO and NLL terms,
    BCO's shift (exactly one of `bco_delta_window` / `bco_delta_decay`, as `BCODelta`) and how
    often the probe runs (0 or None: never)."""

    beta: float = 0.1
    w_dpo: float = 0.8
    w_bco: float = 0.2
    w_nll: float = 1.0
    bco_delta_window: int | None = None
    bco_delta_decay: float | None = None
    probe_every: int | None = None


@dataclass
class MPOState(TrainState):
    """The loop's state, BCO's shift and the monitor's window: what a resume restores."""

    delta: BCODelta = field(default_factory=lambda: BCODelta(decay=0.9))
    monitor: RewardMonitor | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "delta": self.delta.state_dict(),
                "monitor": self.monitor.state_dict() if self.monitor is not None else None}

    def load_dict(self, saved: dict[str, Any]) -> None:
        super().load_dict(saved)
        self.delta.load_state_dict(saved["delta"])
        if self.monitor is not None and saved["monitor"] is not None:
            self.monitor.load_state_dict(saved["monitor"])


class _MPO(Trainer[int]):
    name = "mpo"

    def __init__(self, items: Sequence[PrefItem], refs: torch.Tensor, pad_id: int,
                 settings: MPOSettings, probe: Probe | None, state: MPOState) -> None:
        super().__init__()
        self.items, self.refs, self.pad_id, self.settings = items, refs, pad_id, settings
        self.probe, self.state = probe, state

    def loss(self, model: torch.nn.Module, batch: list[int]) -> StepOutput:
        s = self.settings
        chosen, rejected, nll, tokens = pair_logprobs(model, [self.items[i] for i in batch],
                                                      self.pad_id)
        refs = self.refs[batch].to(chosen.device)
        loss, stats = mpo_loss(chosen, rejected, refs[:, 0], refs[:, 1], nll, s.beta, s.w_dpo,
                               s.w_bco, s.w_nll, self.state.delta.value)
        return StepOutput(loss, {**stats, "chosen_tokens_mean": float(tokens.float().mean())},
                          weight=float(len(batch)))

    def after_step(self, step: int, metrics: dict[str, float], model: torch.nn.Module) -> bool:
        """BCO's shift takes the step's mean reward (the mean over the ranks); every
        `probe_every` steps the probe and monitor run and may stop the run."""
        self.state.delta.update(metrics["rewards/mean"])
        every = self.settings.probe_every
        if self.probe is None or not every or step % every:
            return False
        values = self.probe(model)
        metrics.update({f"probe/{k}": v for k, v in values.items()})
        monitor = self.state.monitor
        if monitor is None:
            return False
        status = monitor.update(step, values["accuracy"], values.get("format_rate", 1.0),
                                values.get("reward_model"))
        metrics.update({f"monitor/{k}": v for k, v in status.metrics.items()})
        for message in status.messages:
            self.state.flags.setdefault(message.split(":")[0], f"step {step}: {message}")
        self.state.stop_reason = status.reason
        return status.stop

    def summary(self, seconds: float) -> dict[str, float]:
        return _summary(self.state.history, seconds, self.state.stop_reason)


def train_mpo(
    model: torch.nn.Module,
    items: Sequence[PrefItem],
    refs: torch.Tensor,
    settings: MPOSettings,
    *,
    pad_id: int,
    probe: Probe | None = None,
    monitor: RewardMonitor | None = None,
    on_step: StepCallback | None = None,
    checkpoint: PhaseCheckpoint | None = None,
) -> TrainResult:
    """Train `model` in place with MPO on `items` (refs [N, 2] from `reference_logprobs`).

    `model`'s trainable parts are set beforehand (`set_trainable`). Returns per-step metrics
    (means over the ranks), a summary (means over the run, last-10-step loss and reward
    accuracy), the monitor's stop reason and every flag it raised. The model is left in eval
    mode.
    """
    if not items:
        raise ValueError("train_mpo got no preference pairs")
    if refs.shape != (len(items), 2):
        raise ValueError(f"train_mpo: refs has shape {tuple(refs.shape)}, expected "
                         f"[{len(items)}, 2] (reference_logprobs of these items)")
    state = MPOState(delta=BCODelta(settings.bco_delta_window, settings.bco_delta_decay),
                     monitor=monitor)
    trainer = _MPO(items, refs, pad_id, settings, probe, state)
    return run_loop(model, range(len(items)), settings, trainer, on_step=on_step,
                    checkpoint=checkpoint)


def _summary(history: list[dict[str, float]], seconds: float, stop: str | None):
    last = history[-10:]
    out = {"steps": float(len(history)), "seconds": seconds, "stopped_early": float(bool(stop)),
           "loss": sum(h["loss"] for h in last) / len(last),
           "first_loss": history[0]["loss"],
           "reward_accuracy_late": sum(h["rewards/accuracy"] for h in last) / len(last),
           "margin_late": sum(h["rewards/margins"] for h in last) / len(last)}
    for key in ("loss/dpo", "loss/bco", "loss/nll", "rewards/margins", "rewards/accuracy"):
        out[f"{key.replace('/', '_')}_mean"] = sum(h[key] for h in history) / len(history)
    probed = [h for h in history if "probe/accuracy" in h]
    if probed:
        out["probe_accuracy_last"] = probed[-1]["probe/accuracy"]
    return out
