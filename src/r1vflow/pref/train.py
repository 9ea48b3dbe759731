"""The MPO loop (R1V2): preference pairs, reference log-probs computed once, the shared engine.

    refs = reference_logprobs(model, items, pad_id, batch_size)   # the start model, once
    result = train_mpo(model, tokenizer, items, refs, epochs=1, batch_size=8, lr=1e-4, ...)

Each optimizer step takes `batch_size` pairs (shuffled epochs), runs chosen and rejected
responses through the policy in one forward ([chosen..., rejected...]), and minimises
`mpo_loss` with BCO's shift from `BCODelta` (updated after the step with the batch's mean
reward). The reference is the start model: its log-probs are computed before the first update,
so no second copy of the model is held. An optional `probe` (called every `probe_every`
steps) measures the reward-model score and rule accuracy of fresh samples; the monitor turns
them into the "MPO threshold" stop (RM-vs-rule gap).

Resume: with `checkpoint` (a `PhaseCheckpoint`, r1vflow.train.checkpoint) the loop restores the
engine, RNG states, data order position (the shuffling generator at the epoch's start and the
batches done), BCODelta's state, the monitor's window, the step history and flags, then saves
that state every `checkpoint_every` steps / `checkpoint_minutes` and at its last step.
`on_step(step, metrics, engine)` runs after every optimizer step (metrics logging).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from r1vflow.models.families.images import ImageInput, stack_images
from r1vflow.pref.loss import BCODelta, mpo_loss
from r1vflow.rl.batch import completion_logprobs, sequence_batch
from r1vflow.rl.monitor import RewardMonitor
from r1vflow.train.checkpoint import PhaseCheckpoint, restore_epoch_position
from r1vflow.train.engine import Backend, TrainEngine, training_progress

__all__ = ["MPOResult", "PrefItem", "pair_logprobs", "reference_logprobs", "train_mpo"]

# probe() -> {"accuracy": rule accuracy, "format_rate": ..., "reward_model": RM score or absent}
Probe = Callable[[torch.nn.Module], dict[str, float]]
StepCallback = Callable[[int, dict[str, float], TrainEngine], None]


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


@dataclass
class MPOResult:
    history: list[dict[str, float]]
    summary: dict[str, float]
    stop_reason: str | None = None
    flags: dict[str, str] = field(default_factory=dict)  # monitor flag -> first message


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


@dataclass(frozen=True)
class MPOWeights:
    beta: float
    w_dpo: float
    w_bco: float
    w_nll: float


def _step(engine: TrainEngine, items: Sequence[PrefItem], refs: torch.Tensor, pad_id: int,
          weights: MPOWeights, delta: BCODelta) -> dict[str, float]:
    chosen, rejected, nll, tokens = pair_logprobs(engine.model, items, pad_id)
    refs = refs.to(chosen.device)
    loss, stats = mpo_loss(chosen, rejected, refs[:, 0], refs[:, 1], nll, weights.beta,
                           weights.w_dpo, weights.w_bco, weights.w_nll, delta.value)
    engine_stats = engine.step(loss)
    delta.update(stats["rewards/mean"])
    return {"loss": float(loss.detach()), **stats, **engine_stats,
            "chosen_tokens_mean": float(tokens.float().mean())}


def _watch(monitor: RewardMonitor | None, probe: Probe | None, model, step: int,
           result: MPOResult) -> tuple[dict[str, float], bool]:
    if probe is None:
        return {}, False
    values = probe(model)
    metrics = {f"probe/{k}": v for k, v in values.items()}
    if monitor is None:
        return metrics, False
    status = monitor.update(step, values["accuracy"], values.get("format_rate", 1.0),
                            values.get("reward_model"))
    metrics.update({f"monitor/{k}": v for k, v in status.metrics.items()})
    for message in status.messages:
        result.flags.setdefault(message.split(":")[0], f"step {step}: {message}")
    result.stop_reason = status.reason
    return metrics, status.stop


def train_mpo(
    model: torch.nn.Module,
    items: Sequence[PrefItem],
    refs: torch.Tensor,
    *,
    pad_id: int,
    epochs: int,
    batch_size: int,
    lr: float,
    beta: float,
    w_dpo: float,
    w_bco: float,
    w_nll: float,
    delta: BCODelta,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.0,
    backend: Backend = "torch",
    zero_stage: int = 0,
    seed: int = 0,
    probe: Probe | None = None,
    probe_every: int = 1,
    monitor: RewardMonitor | None = None,
    on_step: StepCallback | None = None,
    progress: bool = True,
    checkpoint: PhaseCheckpoint | None = None,
) -> MPOResult:
    """Train `model` in place with MPO on `items` (refs [N, 2] from `reference_logprobs`).

    `model`'s trainable parts are set beforehand (`set_trainable`). Returns per-step metrics, a
    summary (means over the run, last-10-step loss and reward accuracy), the monitor's stop
    reason and every flag it raised. The model is left in eval mode.
    """
    if not items:
        raise ValueError("train_mpo got no preference pairs")
    if refs.shape != (len(items), 2):
        raise ValueError(f"train_mpo: refs has shape {tuple(refs.shape)}, expected "
                         f"[{len(items)}, 2] (reference_logprobs of these items)")
    weights = MPOWeights(beta, w_dpo, w_bco, w_nll)
    steps_per_epoch = math.ceil(len(items) / batch_size)
    engine = TrainEngine(model, lr=lr, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                         total_steps=epochs * steps_per_epoch, backend=backend,
                         zero_stage=zero_stage)
    generator = torch.Generator().manual_seed(seed)
    result = MPOResult(history=[], summary={})
    first_epoch, skip, restored = restore_epoch_position(checkpoint, engine, generator)
    stop = _restore_loop(restored, result, delta, monitor)
    total, step, start = epochs * steps_per_epoch, len(result.history), time.perf_counter()
    with training_progress(progress) as bar:
        task = bar.add_task("mpo", total=total, completed=step, loss=float("nan"), tok_s=0.0)
        for epoch in range(first_epoch, epochs):
            if stop:
                break
            epoch_generator = generator.get_state()  # before this epoch's permutation
            order = torch.randperm(len(items), generator=generator).tolist()
            batches = range(0, len(order), batch_size)
            for batch, first in enumerate(batches):
                if epoch == first_epoch and batch < skip:
                    continue  # done before the resume
                step += 1
                index = order[first:first + batch_size]
                metrics = _step(engine, [items[i] for i in index], refs[index], pad_id,
                                weights, delta)
                if probe_every and step % probe_every == 0:
                    watched, stop = _watch(monitor, probe, engine.module, step, result)
                    metrics.update(watched)
                result.history.append(metrics)
                bar.update(task, advance=1, loss=metrics["loss"], tok_s=0.0)
                if on_step is not None:
                    on_step(step, metrics, engine)
                _save(checkpoint, engine, step, step == total or stop, epoch, batch + 1,
                      epoch_generator, result, delta, monitor, stop)
                if stop:
                    break
    engine.release().eval()
    result.summary = _summary(result.history, time.perf_counter() - start, result.stop_reason)
    return result


def _loop_state(result: MPOResult, delta: BCODelta, monitor: RewardMonitor | None,
                stop: bool) -> dict:
    return {"history": result.history, "flags": result.flags, "stop_reason": result.stop_reason,
            "stopped": stop, "delta": delta.state_dict(),
            "monitor": monitor.state_dict() if monitor is not None else None}


def _restore_loop(restored: dict, result: MPOResult, delta: BCODelta,
                  monitor: RewardMonitor | None) -> bool:
    """Put a checkpoint's loop state back (nothing when fresh); True when the run had stopped."""
    if not restored:
        return False
    result.history[:] = [dict(h) for h in restored["history"]]
    result.flags.update(restored["flags"])
    result.stop_reason = restored["stop_reason"]
    delta.load_state_dict(restored["delta"])
    if monitor is not None and restored["monitor"] is not None:
        monitor.load_state_dict(restored["monitor"])
    return bool(restored["stopped"])


def _save(checkpoint: PhaseCheckpoint | None, engine: TrainEngine, step: int, last: bool,
          epoch: int, batch: int, epoch_generator: torch.Tensor, result: MPOResult,
          delta: BCODelta, monitor: RewardMonitor | None, stop: bool) -> None:
    """Let the checkpoint policy save after `step` (always at the last or stopping step)."""
    if checkpoint is None:
        return
    position = {"epoch": epoch, "batch": batch, "epoch_generator": epoch_generator,
                **_loop_state(result, delta, monitor, stop)}
    checkpoint.step(step, engine, lambda: position, last=last)


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
