"""The rich progress bars render their columns (training: loss and tokens/s; transfers: bytes).

No other test draws them (tests run with progress off), so this is where an old rich without one
of the columns, or with another `task.fields` format, would show (scripts/check_floors.py).
"""

from __future__ import annotations

import io

from rich.console import Console

from r1vflow.storage.store import PROGRESS_MIN_BYTES, ProgressBar
from r1vflow.train.engine import training_progress


def render(progress) -> str:
    """The progress table as plain text, the way the live display draws it."""
    console = Console(file=io.StringIO(), width=160, color_system=None, force_terminal=False)
    console.print(progress.make_tasks_table(progress.tasks))
    return console.file.getvalue()


def test_training_progress_shows_step_count_loss_and_tokens_per_second():
    progress = training_progress(enabled=True)
    task = progress.add_task("sft", total=8, loss=0.0, tok_s=0.0)
    progress.update(task, advance=3, loss=1.25, tok_s=12345.6)
    text = render(progress)
    assert "sft" in text
    assert "3/8" in text                 # MofNCompleteColumn
    assert "loss 1.2500" in text         # TextColumn over task.fields
    assert "12,346 tok/s" in text


def test_disabled_training_progress_still_takes_the_fields():
    progress = training_progress(enabled=False)
    task = progress.add_task("grpo", total=2, loss=0.5, tok_s=1.0)
    progress.update(task, advance=1, loss=0.25)
    assert progress.tasks[0].fields == {"loss": 0.25, "tok_s": 1.0}


def test_transfer_progress_shows_bytes_done_of_total():
    total = PROGRESS_MIN_BYTES  # the smallest transfer that gets a bar: 64 MiB = 67.1 MB
    bar = ProgressBar(enabled=True, description="upload sft", total=total)
    bar.advance(total // 2)
    text = render(bar._progress)
    assert "upload sft" in text
    assert "33.6/67.1 MB" in text        # DownloadColumn, decimal units
    small = ProgressBar(enabled=True, description="tiny", total=total - 1)
    assert small._progress is None       # below the threshold: no bar at all


def test_without_a_terminal_every_step_is_one_plain_line():
    """A task's output is a pipe into its log: a line per step (the driver shows the latest
    beside its spinner) instead of a live bar that draws nothing until it ends."""
    from r1vflow.train.progress import PROGRESS_MARK
    from r1vflow.train.progress import training_progress as progress

    stream = io.StringIO()
    with progress(enabled=True, terminal=False, stream=stream) as bar:
        task = bar.add_task("sft", total=4, loss=float("nan"), tok_s=0.0)
        for step in range(4):
            bar.update(task, advance=1, loss=2.0 - step / 4, tok_s=1234.5)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and all(line.startswith(f"{PROGRESS_MARK} sft ") for line in lines)
    assert lines[0].startswith(f"{PROGRESS_MARK} sft 1/4 loss 2.0000 · 1,234 tok/s · ")
    assert " elapsed · ETA " in lines[0]
    assert lines[-1].startswith(f"{PROGRESS_MARK} sft 4/4 loss 1.2500") and lines[-1].endswith(
        "ETA 0 s")
    silent = io.StringIO()
    with progress(enabled=False, terminal=False, stream=silent) as bar:
        bar.update(bar.add_task("x", total=1, loss=0.0, tok_s=0.0), advance=1)
    assert silent.getvalue() == ""
