"""Level 3: the smoke DAG through kfp.local (SubprocessRunner), driven by the real CLI."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from conftest import PRESETS, clean_env

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "r1vflow.cli"]


def _run(*args, cwd=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env=clean_env())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    first = _run("run", str(PRESETS / "smoke.yaml"), "--output-dir", str(out))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    second = _run("run", str(PRESETS / "smoke.yaml"), "--output-dir", str(out))
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((out / "summary.json").read_text())
    return out, summary, again


def test_summary_has_every_stage_succeeded(smoke_run):
    out, summary, _ = smoke_run
    assert summary["status"] == "succeeded"
    assert len(summary["config_fingerprint"]) == 64
    assert list(summary["stages"]) == ["bootstrap", "synthesize_data", "align_projector", "sft",
                                       "train_reward_model", "grpo", "evaluate"]
    for stage, entry in summary["stages"].items():
        assert entry["status"] == "succeeded", (stage, entry)
        assert entry["seconds"] > 0 and entry["mlflow_run_id"]
        assert entry["cached"] is False
    for stage in ("bootstrap", "align_projector", "sft", "train_reward_model", "grpo"):
        assert Path(summary["stages"][stage]["model_uri"]).is_dir()
    metrics = summary["stages"]["evaluate"]["metrics"]
    assert {"accuracy/base", "accuracy/align_projector", "accuracy/sft", "accuracy/grpo"} <= set(
        metrics)


def test_mlflow_holds_parent_nested_runs_and_versions(smoke_run):
    out, summary, _ = smoke_run
    mlflow.set_tracking_uri(summary["mlflow"]["tracking_uri"])
    assert summary["mlflow"]["tracking_uri"] == f"sqlite:///{out.resolve() / 'mlflow.db'}"
    client = mlflow.MlflowClient()
    parent = client.get_run(summary["mlflow"]["parent_run_id"])
    assert parent.data.tags["r1vflow.config_fingerprint"] == summary["config_fingerprint"]
    assert parent.data.tags["r1vflow.pipeline"] == "r1vflow-smoke"
    assert parent.info.status == "FINISHED"
    assert "accuracy/sft" in parent.data.metrics
    for stage, entry in summary["stages"].items():
        run = client.get_run(entry["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["r1vflow.stage"] == stage
    from r1vflow.tracking.lineage import walk_lineage

    grpo_version = summary["stages"]["grpo"]["model_version"]
    chain = walk_lineage(*grpo_version.rsplit("/", 1))
    stages = [node["stage"] for node in chain]
    assert stages[0] == "grpo" and stages[-1] == "bootstrap"
    assert "sft" in stages and "align_projector" in stages
    assert chain[-1]["model_version"] == summary["stages"]["bootstrap"]["model_version"]
    for node in chain:
        for key in ("dataset_digest", "config_fingerprint", "manifest_sha256", "storage_uri"):
            assert node[key], (node["model_version"], key)


def test_final_model_is_candidate_and_first_champion(smoke_run):
    _, summary, again = smoke_run
    promotion = summary["promotion"]
    assert promotion["candidate"] == summary["stages"]["evaluate"]["model_version"]
    assert promotion["promoted"] and promotion["champion"] == promotion["candidate"]
    # the same evaluation again does not beat itself; the champion stays
    assert again["promotion"]["champion"] == promotion["champion"]


def test_second_run_is_served_from_cache(smoke_run):
    _, summary, again = smoke_run
    assert again["status"] == "succeeded"
    assert all(entry["cached"] for entry in again["stages"].values())
    assert again["config_fingerprint"] == summary["config_fingerprint"]
    # cached tasks report the original computation
    assert again["stages"]["sft"]["model_uri"] == summary["stages"]["sft"]["model_uri"]


def test_validate_rejects_bad_config_and_runs_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((PRESETS / "smoke.yaml").read_text().replace("  lr: 1.0e-3", "  lrr: 1.0e-3"))
    for command in (["validate", str(bad)], ["run", str(bad), "--output-dir", str(tmp_path / "o")]):
        result = _run(*command)
        assert result.returncode != 0
        assert "sft.lrr: unknown key" in result.stderr
    assert not (tmp_path / "o").exists()
    negative = _run("validate", str(PRESETS / "smoke.yaml"), "--set", "sft.lr=-0.1")
    assert negative.returncode != 0 and "sft.lr" in negative.stderr
