"""The one training loop (r1vflow.train.loop) on a toy trainer: settings from a config section,
the result, the batches it draws, and a resume whose typed state (with a trainer's own field)
comes back. The multi-rank behaviour (shards, weighted means) is tests/test_ddp_loop.py's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from r1vflow.train.loop import (
    LoopSettings,
    StepOutput,
    Trainer,
    TrainState,
    mean_over_ranks,
    run_loop,
    shard,
)

DATA = [float(i) for i in range(7)]  # targets; batches of 3: [3, 3, 1] per epoch


@dataclass
class CountingState(TrainState):
    """The loop's state plus a trainer's own counter (like MPO's BCO shift)."""

    calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "calls": self.calls}

    def load_dict(self, saved: dict[str, Any]) -> None:
        super().load_dict(saved)
        self.calls = int(saved["calls"])


class Toy(Trainer[float]):
    """Fit one weight to the targets; `crash_at` raises after that step (a killed run)."""

    name = "toy"

    def __init__(self, crash_at: int | None = None) -> None:
        super().__init__()
        self.state = CountingState()
        self.crash_at, self.batches = crash_at, []

    def loss(self, model, batch):
        self.batches.append(list(batch))
        target = torch.tensor(batch)
        loss = (model(torch.ones(len(batch), 1)).squeeze(-1) - target).pow(2).mean()
        return StepOutput(loss, {"size": float(len(batch))}, weight=len(batch), tokens=len(batch))

    def after_step(self, step, metrics, model):
        self.state.calls += 1
        metrics["calls"] = float(self.state.calls)
        if step == self.crash_at:
            raise RuntimeError("killed")
        return False


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(1, 1, bias=False)


SETTINGS = LoopSettings(epochs=3, batch_size=3, lr=0.1, seed=0, progress=False)


def test_from_section_takes_the_fields_the_section_has_then_the_overrides():
    from r1vflow.config import experiment_from_dict
    from r1vflow.train.reward import RewardSettings

    exp = experiment_from_dict({"name": "x", "train_reward_model": {}}, [
        "train_reward_model.batch_size=5", "train_reward_model.nll_weight=0.5"])
    settings = RewardSettings.from_section(exp.train_reward_model, lr=2e-3, progress=False)
    section = exp.train_reward_model
    assert (settings.batch_size, settings.nll_weight, settings.lr) == (5, 0.5, 2e-3)
    assert (settings.epochs, settings.max_length, settings.seed, settings.backend) == (
        section.epochs, section.max_length, section.seed, section.backend)
    assert settings.progress is False and settings.steps is None
    with pytest.raises(TypeError):
        LoopSettings(batch_size=2, lr=1.0, unknown=1)


def test_run_loop_trains_and_reports_every_step():
    model, toy = _model(), Toy()
    seen = []
    result = run_loop(model, DATA, SETTINGS, toy, on_step=lambda s, m: seen.append((s, m)))
    assert [s for s, _ in seen] == list(range(1, 10)) and [m for _, m in seen] == result.history
    assert [h["size"] for h in result.history] == [3, 3, 1] * 3
    assert [h["epoch"] for h in result.history] == [0.0] * 3 + [1.0] * 3 + [2.0] * 3
    assert {"loss", "size", "calls", "lr", "grad_norm"} <= set(result.history[0])
    assert result.items == toy.state.tokens == 21 and toy.state.calls == 9
    assert sorted(sum(toy.batches[:3], [])) == DATA  # each epoch: a permutation, batched
    assert result["steps"] == result.summary["steps"] == 9.0
    assert result.summary["loss"] == pytest.approx(
        sum(h["loss"] for h in result.history[-9:]) / 9)
    assert result.summary["first_loss"] == result.history[0]["loss"]
    assert not model.training


def test_steps_draws_batches_with_replacement_and_no_epoch():
    toy = Toy()
    toy.report_epoch = False
    settings = LoopSettings(steps=5, batch_size=4, lr=0.1, seed=3, progress=False)
    result = run_loop(_model(), DATA, settings, toy)
    generator = torch.Generator().manual_seed(3)
    expected = [[DATA[i] for i in torch.randint(0, 7, (4,), generator=generator).tolist()]
                for _ in range(5)]
    assert toy.batches == expected and len(result.history) == 5
    assert "epoch" not in result.history[0]


def test_one_process_shards_nothing_and_averages_nothing():
    assert shard([1, 2, 3]) == ([1, 2, 3], True)
    assert mean_over_ranks({"a": 0.25}, 3.0) == ({"a": 0.25}, 3.0)
    with pytest.raises(ValueError, match="toy: no training data"):
        run_loop(_model(), [], SETTINGS, Toy())


def test_resume_mid_epoch_restores_the_position_and_the_typed_state(tmp_path):
    from r1vflow.train.checkpoint import Checkpointer, CheckpointPolicy

    reference = _model()
    expected = run_loop(reference, DATA, SETTINGS, Toy())
    policy = CheckpointPolicy(every=2, keep=1)
    with pytest.raises(RuntimeError, match="killed"):  # epoch 1, its second batch
        run_loop(_model(), DATA, SETTINGS, Toy(crash_at=5),
                 checkpoint=Checkpointer("toy", tmp_path, policy).phase("p"))
    again = Checkpointer("toy", tmp_path, policy)
    assert again.resumed_from_step == 4
    model, toy = _model(), Toy()
    result = run_loop(model, DATA, SETTINGS, toy, checkpoint=again.phase("p"))
    assert len(toy.batches) == 5  # steps 5..9 only
    assert toy.state.calls == 9 and result.items == expected.items == 21
    assert result.history == expected.history
    assert torch.equal(model.weight, reference.weight)
