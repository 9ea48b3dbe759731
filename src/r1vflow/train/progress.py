"""The training loops' progress: a rich bar on a terminal, one plain line per step elsewhere.

A KFP task's output is a pipe into its log, where a live bar draws nothing until it ends; there
`training_progress` prints a line per step instead (`PROGRESS_MARK` first), which the local
driver also shows beside its spinner (r1vflow.pipelines.stage_logs):

    [progress] sft 3/8 loss 1.2500 · 12,346 tok/s · 4 s elapsed · ETA 7 s
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PROGRESS_MARK = "[progress]"


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    value = int(round(value))
    return f"{value // 60} min {value % 60:02d} s" if value >= 60 else f"{value} s"


def progress_line(task: Task) -> str:
    """One step of `task` as a plain line: step/total, loss, tokens/s, elapsed, ETA."""
    total = f"/{task.total:.0f}" if task.total is not None else ""
    parts = [f"{PROGRESS_MARK} {task.description} {task.completed:.0f}{total}"]
    fields = task.fields
    if "loss" in fields:
        parts[0] += f" loss {fields['loss']:.4f}"
    if "tok_s" in fields:
        parts.append(f"{fields['tok_s']:,.0f} tok/s")
    parts.append(f"{_seconds(task.elapsed)} elapsed")
    remaining = 0.0 if task.finished else task.time_remaining
    parts.append(f"ETA {_seconds(remaining)}")
    return " · ".join(parts)


class LineProgress(Progress):
    """A Progress that, with `lines`, prints `progress_line` at every advance to `stream`."""

    def __init__(self, *columns: Any, lines: bool = False, stream=None, **kwargs: Any):
        super().__init__(*columns, **kwargs)
        self.lines = lines
        self.stream = stream

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        if self.lines and kwargs.get("advance"):
            with self._lock:
                task = self._tasks[task_id]
            stream = self.stream or sys.stdout
            stream.write(progress_line(task) + "\n")
            stream.flush()


def training_progress(enabled: bool, terminal: bool | None = None, stream=None) -> Progress:
    """A progress display with live loss and tokens/s fields: a rich bar on a terminal, a
    plain line per step elsewhere (a task's log); disabled: nothing. `terminal` defaults to
    whether stdout is one."""
    if terminal is None:
        terminal = Console().is_terminal
    return LineProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[tok_s]:,.0f} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not (enabled and terminal),
        lines=enabled and not terminal,
        stream=stream,
    )
