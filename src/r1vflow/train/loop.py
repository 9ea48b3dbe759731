"""The one training loop under every trainer (sft, reward model, mpo, bootstrap pretraining).

A trainer is its loss step and little else: a `Trainer` subclass says how one batch of its items
becomes a loss (`loss`), what happens after each optimizer step (`after_step`: MPO's BCO shift,
probe and monitor) and how a run is summed up (`summary`); its resume state is one typed
object (`TrainState`, or a subclass with the trainer's own fields). `run_loop` does the rest,
the same way for all of them:

- the engine (`TrainEngine`: AdamW, warmup + cosine, DDP or DeepSpeed) over `settings`;
- the batches: shuffled epochs from a generator seeded with `settings.seed` (or, with
  `settings.steps`, that many batches drawn with replacement: bootstrap's pretraining);
- each global batch of `settings.batch_size` items split across the ranks (`shard`: rank r
  takes items r, r + world, ...), so N ranks do 1/N of the work each;
- each rank's loss weighted by its share of the global batch (items or tokens, as the trainer
  counts them) before DDP/DeepSpeed average the gradients, so that the update equals the one
  process's on the whole batch also when the shares differ;
- the step's metrics averaged over the ranks with the same weights (`mean_over_ranks`), so a
  multi-rank run logs what one process would, and every rank sees the same numbers;
- resume: the engine, RNG states, the epoch and the batches of it already done, and the
  trainer's state come back from a `PhaseCheckpoint`, and are saved as its policy says;
- `on_step(step, metrics)` after every optimizer step, the progress bar, and at the end the
  engine released (ZeRO-3 weights gathered back) and the model in eval mode.

    class MyTrainer(Trainer[Item]):
        name = "mine"
        def loss(self, model, batch):  # this rank's share of the global batch
            return StepOutput(loss, {"accuracy": acc}, weight=len(batch))

    result = run_loop(model, items, LoopSettings(epochs=2, batch_size=16, lr=1e-4), MyTrainer())
    result.summary["loss"], result.history[-1]["accuracy"]
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from r1vflow.models.distributed import rank_world
from r1vflow.train.checkpoint import (
    EpochPosition,
    PhaseCheckpoint,
    restore_epoch_position,
    save_epoch_position,
)
from r1vflow.train.engine import Backend, TrainEngine, training_progress

__all__ = ["LoopSettings", "StepCallback", "StepOutput", "TrainResult", "TrainState", "Trainer",
           "mean_over_ranks", "run_loop", "shard"]

T = TypeVar("T")
StepCallback = Callable[[int, dict[str, float]], None]


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """What the loop needs: the engine's settings and how batches are drawn.

    `batch_size` is the global batch (split across ranks). `steps`: draw that many batches with
    replacement instead of shuffled epochs (`epochs` is then ignored)."""

    batch_size: int
    lr: float
    epochs: int = 1
    steps: int | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    seed: int = 0
    backend: Backend = "torch"
    zero_stage: int = 0
    progress: bool = True

    @classmethod
    def from_section(cls, section: Any, **overrides: Any):
        """The settings a config section (or any object) gives: every field of this class
        that it has, then `overrides` (e.g. an iteration's lr)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {name: getattr(section, name) for name in names if hasattr(section, name)}
        return cls(**{**values, **overrides})

    @property
    def epoch_count(self) -> int:
        return 1 if self.steps is not None else self.epochs

    def batches_per_epoch(self, size: int) -> int:
        return self.steps if self.steps is not None else math.ceil(size / self.batch_size)

    def epoch_batches(self, size: int, generator: torch.Generator) -> Iterator[list[int]]:
        """The index batches of one epoch, drawn from `generator`."""
        if self.steps is not None:
            for _ in range(self.steps):
                yield torch.randint(0, size, (self.batch_size,), generator=generator).tolist()
            return
        order = torch.randperm(size, generator=generator).tolist()
        for start in range(0, size, self.batch_size):
            yield order[start:start + self.batch_size]


# --------------------------------------------------------------------------- state and result


@dataclass
class TrainState:
    """A loop's resume state: every step's (rank-mean) metrics, the tokens this rank processed,
    the items it trained on, and whether (and why) the trainer stopped early with the flags it
    raised. A trainer with more state subclasses it and extends `to_dict` / `load_dict`."""

    history: list[dict[str, float]] = field(default_factory=list)
    tokens: int = 0
    items: int = 0
    stopped: bool = False
    stop_reason: str | None = None
    flags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (a weights-only `torch.load` reads them back)."""
        return {"history": [dict(h) for h in self.history], "tokens": self.tokens,
                "items": self.items, "stopped": self.stopped, "stop_reason": self.stop_reason,
                "flags": dict(self.flags)}

    def load_dict(self, saved: dict[str, Any]) -> None:
        self.history[:] = [dict(h) for h in saved["history"]]
        self.tokens, self.items = int(saved["tokens"]), int(saved["items"])
        self.stopped, self.stop_reason = bool(saved["stopped"]), saved["stop_reason"]
        self.flags.clear()
        self.flags.update(saved["flags"])


@dataclass
class TrainResult:
    """What every trainer returns: per-step metrics (means over the ranks), the trainer's
    summary, the stop reason and flags of an early stop, and the items this rank trained on
    (its shares of the global batches). `result[key]` reads `result.summary[key]`."""

    history: list[dict[str, float]]
    summary: dict[str, float]
    stop_reason: str | None = None
    flags: dict[str, str] = field(default_factory=dict)
    items: int = 0

    def __getitem__(self, key: str) -> float:
        return self.summary[key]


@dataclass
class StepOutput:
    """One loss step on this rank's share: the loss (a mean over `weight` units: items, or
    tokens for a token-mean loss), its metrics (means over the same units), and the non-padding
    tokens it read (tokens/s)."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    weight: float = 1.0
    tokens: int = 0


class Trainer(Generic[T]):
    """A trainer's part of the loop. Subclasses set `name` (the progress bar's label) and
    `loss`; `self.state` is their resume state (replace it with a `TrainState` subclass for
    more)."""

    name = "train"
    report_epoch = True  # add "epoch" to each step's metrics

    def __init__(self) -> None:
        self.state = TrainState()

    def loss(self, model: torch.nn.Module, batch: list[T]) -> StepOutput:
        """The loss of `batch` (this rank's share of a global batch) under `model` (the engine's
        model: DDP- or DeepSpeed-wrapped when several ranks train)."""
        raise NotImplementedError

    def after_step(self, step: int, metrics: dict[str, float], model: torch.nn.Module) -> bool:
        """After optimizer step `step` (1-based) with its rank-mean `metrics` (add to them
        here); `model` is the unwrapped module. True: stop training now."""
        return False

    def summary(self, seconds: float) -> dict[str, float]:
        """The run summed up: loss (mean of the last 10 steps), first_loss, steps, seconds."""
        losses = [h["loss"] for h in self.state.history]
        return {"loss": sum(losses[-10:]) / len(losses[-10:]), "first_loss": losses[0],
                "steps": float(len(losses)), "seconds": seconds}


# --------------------------------------------------------------------------- ranks


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and rank_world()[1] > 1


def shard(batch: Sequence[T]) -> tuple[list[T], bool]:
    """This rank's share of a global batch (rank r: items r, r + world, ...) and whether it is
    a real share. A rank whose share would be empty gets the batch's first item, marked not
    real (its loss then weighs 0), so that DDP's and ZeRO's collective calls stay in step.
    One process: the whole batch."""
    if not _distributed():
        return list(batch), True
    rank, world = rank_world()
    share = list(batch[rank::world])
    return (share, True) if share else (list(batch[:1]), False)


def mean_over_ranks(metrics: dict[str, float], weight: float,
                    device: torch.device | None = None) -> tuple[dict[str, float], float]:
    """(`metrics` averaged over the ranks, each rank weighing `weight`; the total weight).

    With each rank's metrics means over its `weight` units, the result is the mean over all
    units of the global batch: what one process computing the whole batch reports. The keys
    must be the same on every rank. One process: `metrics` as they are."""
    if not _distributed():
        return dict(metrics), weight
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] * weight for k in keys] + [weight], dtype=torch.float64,
                          device=device)
    torch.distributed.all_reduce(values)
    total = float(values[-1])
    means = values[:-1] / total if total > 0 else values[:-1] * 0
    return dict(zip(keys, means.tolist(), strict=True)), total


# --------------------------------------------------------------------------- the loop


def run_loop(model: torch.nn.Module, data: Sequence[T], settings: LoopSettings,
             trainer: Trainer[T], *, on_step: StepCallback | None = None,
             checkpoint: PhaseCheckpoint | None = None) -> TrainResult:
    """Train `model` in place on `data` with `trainer`'s loss (module docstring); the model is
    left in eval mode. With `checkpoint` the loop resumes from its newest checkpoint and saves
    as its policy says (and at the last step, or the step the trainer stopped at)."""
    if not len(data):
        raise ValueError(f"{trainer.name}: no training data")
    return _Loop(model, data, settings, trainer, on_step, checkpoint).run()


class _Loop(Generic[T]):
    def __init__(self, model, data: Sequence[T], settings: LoopSettings, trainer: Trainer[T],
                 on_step: StepCallback | None, checkpoint: PhaseCheckpoint | None) -> None:
        self.data, self.settings, self.trainer = data, settings, trainer
        self.on_step, self.checkpoint = on_step, checkpoint
        self.total = settings.epoch_count * settings.batches_per_epoch(len(data))
        self.engine = TrainEngine(model, lr=settings.lr, weight_decay=settings.weight_decay,
                                  warmup_ratio=settings.warmup_ratio, total_steps=self.total,
                                  backend=settings.backend, zero_stage=settings.zero_stage)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.start = time.perf_counter()

    def run(self) -> TrainResult:
        state = self.trainer.state
        resume = restore_epoch_position(self.checkpoint, self.engine, self.generator, state)
        with training_progress(self.settings.progress) as bar:
            task = bar.add_task(self.trainer.name, total=self.total,
                                completed=len(state.history), loss=float("nan"), tok_s=0.0)
            for epoch in range(resume.epoch, self.settings.epoch_count):
                if state.stopped:
                    break
                epoch_generator = self.generator.get_state()  # before this epoch's draws
                batches = self.settings.epoch_batches(len(self.data), self.generator)
                for index, batch in enumerate(batches):
                    if epoch == resume.epoch and index < resume.batch:
                        continue  # done before the restart
                    self._step(batch, epoch)
                    bar.update(task, advance=1, loss=state.history[-1]["loss"],
                               tok_s=state.tokens / (time.perf_counter() - self.start))
                    step = len(state.history)
                    if self.on_step is not None:
                        self.on_step(step, state.history[-1])
                    position = EpochPosition(epoch, index + 1, epoch_generator)
                    save_epoch_position(self.checkpoint, self.engine, step,
                                        step == self.total or state.stopped, position, state)
                    if state.stopped:
                        break
        self.engine.release().eval()
        summary = self.trainer.summary(time.perf_counter() - self.start)
        return TrainResult(state.history, summary, state.stop_reason, state.flags, state.items)

    def _step(self, indices: list[int], epoch: int) -> None:
        """One optimizer step on this rank's share of the global batch `indices`."""
        state, engine = self.trainer.state, self.engine
        share, real = shard(indices)
        out = self.trainer.loss(engine.model, [self.data[i] for i in share])
        weight = out.weight if real else 0.0
        local = {"loss": float(out.loss.detach()), **out.metrics}
        metrics, total = mean_over_ranks(local, weight, out.loss.device)
        loss = out.loss
        scale = weight * rank_world()[1] / total if total > 0 else 1.0
        if scale != 1.0:  # DDP / DeepSpeed average the ranks' gradients: weigh each by its share
            loss = loss * scale
        metrics.update(engine.step(loss))
        if self.trainer.report_epoch:
            metrics["epoch"] = float(epoch)
        state.tokens += out.tokens
        state.items += len(share) if real else 0
        state.stopped = self.trainer.after_step(len(state.history) + 1, metrics, engine.module)
        state.history.append(metrics)
