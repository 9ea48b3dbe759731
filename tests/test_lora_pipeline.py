"""The smoke DAG with LoRA on sft and grpo, through kfp.local and the real CLI: each of the two
models is saved merged with its peft adapter beside it (<model>/adapter), the next stage and
vLLM load the merged model (GRPO syncs it after every step), and MLflow registers the merged
model with its parent, the adapter's settings as tags and params, the adapter as run
artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_run(lora_terminal_run):
    """The session's smoke DAG with LoRA on sft and grpo (conftest.lora_terminal_run, run on a
    terminal for test_run_terminal.py too): the stages before sft are served from the smoke
    run's KFP cache; sft, grpo and evaluate run with the adapters."""
    run = lora_terminal_run
    assert run.code == 0, run.text[-6000:]
    assert {s: e["cached"] for s, e in run.summary["stages"].items()} == {
        "bootstrap": True, "synthesize_data": True, "align_projector": True,
        "train_reward_model": True, "sft": False, "grpo": False, "evaluate": False}
    return run.out, run.summary


def test_sft_and_grpo_leave_a_peft_adapter_beside_a_merged_model(lora_run):
    from safetensors import safe_open

    _, summary = lora_run
    assert all(e["status"] == "succeeded" for e in summary["stages"].values())
    for stage in ("sft", "grpo"):
        model = Path(summary["stages"][stage]["model_uri"])
        config = json.loads((model / "adapter" / "adapter_config.json").read_text())
        assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 8, 16.0)
        with safe_open(str(model / "adapter" / "adapter_model.safetensors"), "pt") as f:
            keys = list(f.keys())
        assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
        assert all(k.startswith("base_model.model.model.language_model.") for k in keys)
        with safe_open(str(model / "model.safetensors"), "pt") as f:  # merged: base names only
            assert not [k for k in f.keys() if "lora_" in k or "base_layer" in k]
    for stage in ("train_reward_model", "align_projector"):  # full weights, as configured
        assert not (Path(summary["stages"][stage]["model_uri"]) / "adapter").exists()
    grpo = summary["stages"]["grpo"]["metrics"]
    assert grpo["weight_syncs"] == 5.0  # vLLM took the merged weights before and after 4 steps
    assert grpo["logprob_gap_max"] < 1e-3  # and generates as the adapter model scores
    assert grpo["trainable_params_llm"] > 0 and grpo["trainable_params_vision"] == 0


def test_mlflow_registers_the_merged_model_with_its_adapter(lora_run):
    _, summary = lora_run
    client = mlflow.MlflowClient(summary["mlflow"]["tracking_uri"])
    for stage in ("sft", "grpo"):
        entry = summary["stages"][stage]
        name, number = entry["model_version"].rsplit("/", 1)
        version = client.get_model_version(name, number)
        assert version.tags["r1vflow.parent"]  # its start model's version, as for any model
        assert json.loads(version.tags["r1vflow.lora"])["rank"] == 8
        assert version.tags["r1vflow.adapter_uri"].endswith("/adapter")
        run = client.get_run(entry["mlflow_run_id"])
        assert run.data.params[f"{stage}.lora.rank"] == "8"
        assert run.data.params[f"{stage}.lora.target_modules"].count("_proj") == 7
        files = {a.path for a in client.list_artifacts(run.info.run_id, "model/adapter")}
        assert {"model/adapter/adapter_config.json",
                "model/adapter/adapter_model.safetensors"} <= files
    assert summary["stages"]["grpo"]["model_version"] != summary["stages"]["sft"]["model_version"]
