"""`r1vflow run` on a terminal (a pseudo-terminal here): its header comes before anything slow,
and while sft and grpo run the spinner shows their progress (step/total, loss, tokens/s, ETA),
read from the progress line every training step writes to the task's log."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from conftest import PRESETS, clean_env

pytestmark = pytest.mark.slow


def _run_in_pty(args: list[str], timeout: float = 900) -> tuple[bytes, float | None, int]:
    """(everything the command wrote to its terminal, seconds to its first byte, exit code)."""
    leader, follower = pty.openpty()
    env = {**clean_env(), "COLUMNS": "200", "TERM": "xterm"}
    started = time.monotonic()
    proc = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, env=env,
                            close_fds=True)
    os.close(follower)
    out, first = bytearray(), None
    while time.monotonic() - started < timeout:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            if first is None:
                first = time.monotonic() - started
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    return bytes(out), first, proc.wait(timeout=60)


def test_a_terminal_sees_the_header_at_once_and_progress_inside_sft_and_grpo(smoke_dag,
                                                                             tmp_path):
    """The smoke DAG with a changed sft.lr into a dir holding the session smoke run's KFP cache
    (conftest.smoke_dag): the stages before sft are served from it; sft, grpo and evaluate
    run."""
    run_dir = smoke_dag.cache_into(tmp_path / "run")
    out, first, code = _run_in_pty([sys.executable, "-m", "r1vflow.cli", "run",
                                    str(PRESETS / "smoke.yaml"), "--output-dir", str(run_dir),
                                    "--set", "sft.lr=2e-3"])
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace"))
    assert code == 0, text[-3000:]
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
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {s: e["cached"] for s, e in summary["stages"].items()} == {
        "bootstrap": True, "synthesize_data": True, "align_projector": True,
        "train_reward_model": True, "sft": False, "grpo": False, "evaluate": False}
