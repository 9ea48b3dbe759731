"""Reward-hacking and format-collapse monitor for GRPO (R1V2's "calibrated reward thresholds").

R1V2 reports that too strong a reinforcement signal raised visual hallucination, and that the
run had to be watched and stopped at a reward threshold; the report never defines the
threshold. Here two signals are watched over a sliding window of per-step batch means:

- reward hacking: the reward-model score rises while rule accuracy does not. Over the last
  ``window`` steps, rise(x) = mean(second half) - mean(first half). The flag is raised when
  rise(rm) > ``rm_rise`` and rise(accuracy) <= ``accuracy_min_rise``. Needs an RM score.
- format collapse: the windowed mean format-compliance rate falls more than ``format_drop``
  below the best windowed mean seen so far in the run.
- RM-vs-rule gap (R1V2's "MPO threshold", used in MPO and GRPO): the windowed mean
  reward-model score (0..1) exceeds the windowed rule accuracy by more than
  ``rm_accuracy_gap`` (off when None). Needs an RM score.

A flag raised for ``patience`` consecutive steps with ``stop_on_flag`` set asks the trainer to
stop; the reason names the signal, the measured values and the threshold. Pure Python: it
sees floats, never tensors or models.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the config section is only read (duck-typed): no pydantic import at run time
    from r1vflow.config import MonitorConfig

__all__ = ["MonitorStatus", "RewardMonitor", "window_rise"]


def window_rise(values: list[float]) -> float:
    """mean(second half) - mean(first half) of ``values`` (odd length: the middle value is in
    neither half). Needs at least 2 values."""
    if len(values) < 2:
        raise ValueError(f"window_rise needs >= 2 values, got {len(values)}")
    half = len(values) // 2
    first, second = values[:half], values[len(values) - half :]
    return sum(second) / half - sum(first) / half


@dataclass(frozen=True)
class MonitorStatus:
    """One step's verdict: flags (0/1), the measured values, and whether to stop (and why)."""

    metrics: dict[str, float]
    flags: dict[str, bool]
    stop: bool = False
    reason: str | None = None
    messages: list[str] = field(default_factory=list)


class RewardMonitor:
    """Sliding-window watcher of per-step accuracy, format rate and reward-model score.

    Args:
        window: steps per window (>= 2); nothing is flagged before ``window`` steps.
        rm_rise: reward-model score rise over a window above which, with accuracy not rising,
            reward hacking is flagged.
        accuracy_min_rise: the accuracy rise that clears the RM rise (default 0: any accuracy
            gain counts as real progress).
        format_drop: drop of the windowed format rate below its best that counts as collapse.
        stop_on_flag: ask to stop once a flag has held for ``patience`` consecutive steps.
        patience: consecutive flagged steps before stopping (>= 1).
    """

    def __init__(
        self,
        window: int,
        rm_rise: float,
        format_drop: float,
        accuracy_min_rise: float = 0.0,
        stop_on_flag: bool = False,
        patience: int = 1,
        rm_accuracy_gap: float | None = None,
    ) -> None:
        if window < 2:
            raise ValueError(f"RewardMonitor: window must be >= 2, got {window}")
        if patience < 1:
            raise ValueError(f"RewardMonitor: patience must be >= 1, got {patience}")
        if rm_rise < 0 or format_drop < 0:
            raise ValueError(
                f"RewardMonitor: rm_rise ({rm_rise}) and format_drop ({format_drop}) must be >= 0"
            )
        self.window, self.patience = window, patience
        self.rm_rise, self.accuracy_min_rise = rm_rise, accuracy_min_rise
        self.format_drop, self.stop_on_flag = format_drop, stop_on_flag
        self._accuracy: deque[float] = deque(maxlen=window)
        self._format: deque[float] = deque(maxlen=window)
        self._rm: deque[float] = deque(maxlen=window)
        self._best_format: float | None = None
        self.rm_accuracy_gap = rm_accuracy_gap
        self._streak = {"reward_hacking": 0, "format_collapse": 0, "rm_accuracy_gap": 0}

    @classmethod
    def from_config(cls, cfg: MonitorConfig) -> RewardMonitor:
        """The monitor a `grpo.monitor` config section describes."""
        t = cfg.thresholds
        return cls(cfg.window, t.rm_rise, t.format_drop, t.accuracy_min_rise, cfg.stop_on_flag,
                   cfg.patience, t.rm_accuracy_gap)

    def state_dict(self) -> dict[str, Any]:
        """The window, the best format mean and the flag streaks (for a checkpoint)."""
        return {"accuracy": list(self._accuracy), "format": list(self._format),
                "rm": list(self._rm), "best_format": self._best_format,
                "streak": dict(self._streak)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("accuracy", "format", "rm"):
            getattr(self, f"_{name}").clear()
            getattr(self, f"_{name}").extend(float(v) for v in state[name])
        self._best_format = state["best_format"]
        self._streak = {k: int(v) for k, v in state["streak"].items()}

    def update(
        self, step: int, accuracy: float, format_rate: float, rm_score: float | None = None
    ) -> MonitorStatus:
        """Record one step's batch means and return the verdict for this step."""
        self._accuracy.append(float(accuracy))
        self._format.append(float(format_rate))
        if rm_score is not None:
            self._rm.append(float(rm_score))
        metrics: dict[str, float] = {}
        messages: list[str] = []
        hacking = self._check_hacking(metrics, messages)
        collapse = self._check_format(metrics, messages)
        flags = {"reward_hacking": hacking, "format_collapse": collapse,
                 "rm_accuracy_gap": self._check_gap(metrics, messages)}
        for name, raised in flags.items():
            self._streak[name] = self._streak[name] + 1 if raised else 0
            metrics[name] = float(raised)
        stop, reason = False, None
        if self.stop_on_flag:
            held = [n for n, s in self._streak.items() if s >= self.patience]
            if held:
                stop = True
                reason = f"step {step}: stopped early on {', '.join(held)}: " + "; ".join(
                    m for m in messages if m.split(":")[0] in held
                )
        return MonitorStatus(metrics, flags, stop, reason, messages)

    def _check_hacking(self, metrics: dict[str, float], messages: list[str]) -> bool:
        if len(self._rm) < self.window or len(self._accuracy) < self.window:
            return False
        rm_up, acc_up = window_rise(list(self._rm)), window_rise(list(self._accuracy))
        metrics["rm_rise"], metrics["accuracy_rise"] = rm_up, acc_up
        if rm_up > self.rm_rise and acc_up <= self.accuracy_min_rise:
            messages.append(
                f"reward_hacking: reward-model score rose by {rm_up:.3f} over the last "
                f"{self.window} steps (threshold {self.rm_rise}) while rule accuracy changed by "
                f"{acc_up:+.3f} (needed > {self.accuracy_min_rise})"
            )
            return True
        return False

    def _check_gap(self, metrics: dict[str, float], messages: list[str]) -> bool:
        if self.rm_accuracy_gap is None or len(self._rm) < self.window:
            return False
        gap = sum(self._rm) / len(self._rm) - sum(self._accuracy) / len(self._accuracy)
        metrics["rm_accuracy_gap_value"] = gap
        if gap > self.rm_accuracy_gap:
            messages.append(
                f"rm_accuracy_gap: reward-model score exceeds rule accuracy by {gap:.3f} over "
                f"the last {self.window} steps (threshold {self.rm_accuracy_gap})")
            return True
        return False

    def _check_format(self, metrics: dict[str, float], messages: list[str]) -> bool:
        if len(self._format) < self.window:
            return False
        current = sum(self._format) / len(self._format)
        best = current if self._best_format is None else max(self._best_format, current)
        self._best_format = best
        drop = best - current
        metrics["format_window_mean"], metrics["format_drop"] = current, drop
        if drop > self.format_drop:
            messages.append(
                f"format_collapse: format compliance over the last {self.window} steps is "
                f"{current:.3f}, {drop:.3f} below its best window {best:.3f} "
                f"(threshold {self.format_drop})"
            )
            return True
        return False
