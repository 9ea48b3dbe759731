"""The quiet run: `r1vflow run` prints a line per stage and the summary; each task's whole log
goes to <output-dir>/logs/<stage>.log, and a failed stage's line names its log."""

import json
import subprocess
import sys

import pytest

from conftest import PRESETS, clean_env

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "r1vflow.cli"]


def _run(*args):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=900,
                          env=clean_env())


def test_smoke_run_prints_a_line_per_stage_and_logs_each_task(smoke_dag):
    """The session's `r1vflow run pipelines/configs/smoke.yaml --output-dir OUT`
    (conftest.smoke_dag: exit 0 checked there), its output and logs/ as it left them."""
    printed, first = smoke_dag.stdout + smoke_dag.stderr, smoke_dag.first
    lines = printed.splitlines()
    assert len(lines) < 40, printed
    assert "Streamed logs" not in printed and '"model"' not in printed  # no executor stream
    summary = json.loads((first / "summary.json").read_text())
    assert list(summary["stages"]) == ["bootstrap", "synthesize_data", "align_projector",
                                       "train_reward_model", "sft", "grpo", "evaluate"]
    for stage in summary["stages"]:
        log = first / "logs" / f"{stage}.log"
        assert log.is_file() and log.stat().st_size > 0, stage
        assert any(line.split()[1:3] == [stage, "succeeded"] for line in lines), (stage, printed)
    # the executor's stream, with the stage's own result (printed by it alone), is in its log
    logs = {stage: (first / "logs" / f"{stage}.log").read_text() for stage in summary["stages"]}
    assert "Executing task" in logs["bootstrap"]
    assert '"stage":"bootstrap"' in logs["bootstrap"]
    assert not any('"stage":"bootstrap"' in text for stage, text in logs.items()
                   if stage != "bootstrap")


def test_failed_stage_line_names_its_log(tmp_path):
    # valid config (vocab_size >= 64), but bootstrap's byte-level BPE needs more: it fails first
    result = _run("run", str(PRESETS / "smoke.yaml"), "--output-dir", str(tmp_path),
                  "--set", "model.tiny.vocab_size=64")
    printed = result.stdout + result.stderr
    assert result.returncode == 1, printed[-3000:]
    log = tmp_path / "logs" / "bootstrap.log"
    failed = [line for line in printed.splitlines() if "bootstrap" in line and "FAILED" in line]
    assert failed and str(log) in failed[0], printed
    assert "Traceback" in log.read_text()
    assert len(printed.splitlines()) < 40, printed
