"""`r1vflow run` on a terminal (a pseudo-terminal here): its header comes before anything slow,
and while sft and grpo run the spinner shows their progress (step/total, loss, tokens/s, ETA),
read from the progress line every training step writes to the task's log."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.slow


def test_a_terminal_sees_the_header_at_once_and_progress_inside_sft_and_grpo(
        lora_terminal_run):
    """The session's LoRA smoke run on a terminal (conftest.lora_terminal_run): the stages
    before sft are served from the smoke run's cache; sft, grpo and evaluate run."""
    run = lora_terminal_run
    text, first, run_dir = run.text, run.first, run.out
    assert run.code == 0, text[-3000:]
    header = text.index("running smoke")
    assert header < text.index("succeeded"), text[:2000]  # before MLflow, KFP, any task
    assert first is not None and first < 5.0, first  # ~1 s on an idle 2-core machine
    for stage in ("sft", "grpo"):
        shown = re.findall(rf"{stage} (\d+)/(\d+) loss -?[\d.]+ · [\d,]+ tok/s · .*? elapsed · "
                           rf"ETA", text)
        assert shown, f"no progress of {stage} on the terminal:\n{text[-3000:]}"
        assert int(shown[-1][0]) <= int(shown[-1][1])
        log = (run_dir / "logs" / f"{stage}.log").read_text()
        steps = re.findall(rf"\[progress\] {stage} (\d+)/(\d+) ", log)
        assert steps and steps[-1][0] == steps[-1][1], stage  # every step, to the last
    assert {s: e["cached"] for s, e in run.summary["stages"].items()} == {
        "bootstrap": True, "synthesize_data": True, "align_projector": True,
        "train_reward_model": True, "sft": False, "grpo": False, "evaluate": False}
