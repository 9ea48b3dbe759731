"""Level 3: the new stages through kfp.local with the real CLI: the smoke DAG with distill
(AL-CoTD) before sft and mpo between sft and grpo, then the R1V2 shape (no sft: base -> mpo ->
grpo)."""

import json
import subprocess
import sys

import pytest

from conftest import PRESETS, clean_env

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "r1vflow.cli"]
MPO = ("mpo={epochs: 1, batch_size: 16, val_limit: 8, val_max_new_tokens: 16, "
       "pairs: {prompts: 24, samples_per_prompt: 2, max_new_tokens: 16}}")
DISTILL = "distill={limit: 16, max_attempts: 2, max_new_tokens: 16, compare_limit: 8}"


def _run(out, *sets):
    args = [a for s in sets for a in ("--set", s)]
    result = subprocess.run([*CLI, "run", str(PRESETS / "smoke.yaml"), "--output-dir", str(out),
                             *args], capture_output=True, text=True, timeout=1500,
                            env=clean_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def _meta(summary, stage):
    from pathlib import Path

    return json.loads((Path(summary["stages"][stage]["model_uri"].removeprefix("file://"))
                       / "r1vflow_model.json").read_text())


@pytest.mark.extended  # the longest chain; test_r1v2_shape_without_sft runs mpo -> grpo in CI
def test_distill_sft_mpo_grpo_chain(tmp_path):
    summary = _run(tmp_path / "full", DISTILL, MPO)
    stages = summary["stages"]
    assert [s for s in stages if stages[s]["status"] == "succeeded"] == [
        "bootstrap", "synthesize_data", "align_projector", "train_reward_model", "distill",
        "sft", "mpo", "grpo", "evaluate"]
    assert "acceptance_rate" in stages["distill"]["metrics"]
    assert _meta(summary, "mpo")["parent"] == stages["sft"]["model_version"]
    assert _meta(summary, "grpo")["parent"] == stages["mpo"]["model_version"]
    evaluated = stages["evaluate"]["metrics"]
    assert {"accuracy/mpo", "accuracy/grpo", "hallucination_rate/mpo"} <= set(evaluated)


def test_r1v2_shape_without_sft(tmp_path, smoke_dag):
    """Into a dir holding the session smoke run's KFP cache (conftest.smoke_dag): bootstrap,
    synthesize_data and train_reward_model (same config slices) are served from it."""
    summary = _run(smoke_dag.cache_into(tmp_path / "r1v2"), "sft=null", "align_projector=null",
                   MPO)
    stages = summary["stages"]
    assert "sft" not in stages
    assert all(e["status"] == "succeeded" for e in stages.values()), stages
    assert {s: e["cached"] for s, e in stages.items()} == {
        "bootstrap": True, "synthesize_data": True, "train_reward_model": True, "mpo": False,
        "grpo": False, "evaluate": False}
    assert _meta(summary, "mpo")["parent"] == stages["bootstrap"]["model_version"]
    assert _meta(summary, "grpo")["parent"] == stages["mpo"]["model_version"]
