"""What a report is drawn from: a stage's final metrics, its per-step histories, its extras."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# key -> [(step, value), ...] in logging order: what StageTracker.log_metrics(step=...) recorded
History = dict[str, list[tuple[int, float]]]

_HEADLINE = ("accuracy/", "val_accuracy", "train_loss", "num_", "format_rate/")


@dataclass
class ReportData:
    """Everything a stage's report shows.

    `history`: metric key (as logged, e.g. "train/loss") -> [(step, value)].
    `extra`: stage-specific JSON-able values that are not metrics (the reward model's val
    scores, evaluate's lineage chain, ...); each figure builder documents the keys it reads."""

    stage: str
    experiment: str
    metrics: dict[str, float]
    history: History = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def series(history: Mapping[str, list[tuple[int, float]]], key: str
           ) -> tuple[list[int], list[float]]:
    """(steps, values) of one history key; empty lists when it was never logged."""
    points = history.get(key, [])
    return [int(s) for s, _ in points], [float(v) for _, v in points]


def headline_metric(metrics: Mapping[str, Any]) -> tuple[str, float] | None:
    """The one metric that sums a stage up: the last accuracy/<label> (the latest model), else
    the last val_accuracy (the last step's), else the first train_loss, num_, format_rate/,
    else the first metric with "loss" in its name, else the first metric; None without any."""
    numeric = {k: v for k, v in metrics.items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    for prefix in _HEADLINE:
        keys = [k for k in numeric if k.startswith(prefix)]
        if keys:
            key = keys[-1] if "accuracy" in prefix else keys[0]
            return key, float(numeric[key])
    key = next((k for k in numeric if "loss" in k), next(iter(numeric), None))
    return (key, float(numeric[key])) if key is not None else None


def format_value(value: float) -> str:
    """How a metric is printed on a page: 6 significant digits, so float(text) is the value
    to 6 digits (the browser test compares pages with summary.json this way)."""
    return f"{value:.6g}"
