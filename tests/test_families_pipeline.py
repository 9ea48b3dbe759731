"""Every family through every stage (slow): a tiny checkpoint in its published layout goes
through import_model, synthesize_data, train_reward_model, iterative sft, grpo (SSB on, hybrid
reward) and evaluate as stage functions; the llava composition also through align_projector;
and the pretrained-smoke preset through kfp.local with the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import pytest

from r1vflow.config import experiment_from_dict, load_experiment
from r1vflow.models.families.fixtures import build_checkpoint, build_composition_parts
from r1vflow.models.io import read_metadata

from conftest import PRESETS, MicroChain, clean_env

pytestmark = pytest.mark.slow
SHRINK = ["synthesize_data.num_train=32", "synthesize_data.num_val=16",
          "synthesize_data.num_test=8"]


def _chain(tmp_path, exp, with_align: bool = False) -> dict:
    chain = MicroChain(tmp_path, exp)
    out = {"import_model": chain.run("import_model", {}, {"base_model": "base",
                                                          "substitute_llm": "substitute"})}
    out["synthesize_data"] = chain.run("synthesize_data", {}, {"dataset": "dataset"})
    start = {"base_model": "base"}
    if with_align:
        out["align_projector"] = chain.run(
            "align_projector", {"base_model": "base", "substitute_llm": "substitute",
                                "dataset": "dataset"}, {"model": "aligned"})
        start = {"base_model": "base", "aligned_model": "aligned"}
    out["train_reward_model"] = chain.run("train_reward_model",
                                          {"base_model": "base", "dataset": "dataset"},
                                          {"model": "rm"})
    out["sft"] = chain.run("sft", {**start, "dataset": "dataset", "reward_model": "rm"},
                           {"model": "sft", "iterations": "iterations"})
    out["grpo"] = chain.run("grpo", {"sft_model": "sft", "dataset": "dataset",
                                     "reward_model": "rm"}, {"model": "grpo",
                                                             "checkpoints": "checkpoints"})
    out["evaluate"] = chain.run("evaluate", {"base_model": "base", "dataset": "dataset",
                                             "sft_model": "sft", "grpo_model": "grpo"},
                                {"predictions": "predictions"})
    out["uri"] = chain.uri
    return out


def _check_lineage(out: dict, family: str, tmp_path) -> None:
    root = out["import_model"].model_version
    assert root == "fam-import-model/1"
    mlflow.set_tracking_uri(out["uri"])
    client = mlflow.MlflowClient()
    tags = client.get_model_version("fam-import-model", "1").tags
    assert (tags["r1vflow.parent"], tags["r1vflow.family"]) == ("", family)
    sft = read_metadata(tmp_path / "sft")
    assert read_metadata(tmp_path / "base")["parent"] is None
    grpo = client.get_model_version("fam-grpo", "1").tags
    assert grpo["r1vflow.parent"] == sft["model_version"]
    assert out["grpo"].metrics["steps"] == 2.0
    assert out["grpo"].metrics["effective_ratio_before_mean"] > 0  # the RM term varies
    assert {"accuracy/base", "accuracy/sft", "accuracy/grpo"} <= set(out["evaluate"].metrics)


# qwen2_5_vl in `make test`; the other three families run the same code path and are
# `extended` (make test-all) to keep CI within its budget
EXTENDED = pytest.mark.extended


@pytest.mark.parametrize("family", ["qwen2_5_vl", pytest.param("qwen3_vl", marks=EXTENDED),
                                    pytest.param("internvl", marks=EXTENDED),
                                    pytest.param("internvl_chat", marks=EXTENDED)])
def test_whole_vlm_family_through_every_stage(tmp_path, family):
    source = build_checkpoint(family, tmp_path / "source")
    exp = load_experiment(PRESETS / "pretrained-smoke.yaml",
                          [f"model.pretrained.source={source}", "name=fam", *SHRINK])
    out = _chain(tmp_path, exp)
    native = "internvl" if family == "internvl_chat" else family
    assert json.loads((tmp_path / "grpo" / "config.json").read_text())["model_type"] == native
    _check_lineage(out, family, tmp_path)  # the tag names the source's family


@pytest.mark.parametrize("vision", ["siglip", pytest.param("internvit", marks=EXTENDED)])
def test_llava_composition_with_align_projector(tmp_path, vision):
    parts = build_composition_parts(tmp_path / "parts", vision=vision)
    data = load_experiment(PRESETS / "pretrained-smoke.yaml").model_dump(mode="json")
    data["model"]["pretrained"] = {"vision_model": str(parts["vision"]),
                                   "llm_model": str(parts["llm"]),
                                   "substitute_llm_model": str(parts["substitute"]),
                                   "dtype": "float32"}
    data["align_projector"] = {
        "substages": [{"name": "captions", "data": "captions", "fraction": 0.5, "lr": 2e-3}],
        "align": {"data": "cot", "fraction": 0.5, "lr": 1e-3}, "batch_size": 16,
        "max_length": 192, "val_limit": 8, "val_max_new_tokens": 8, "val_batch_size": 8}
    exp = experiment_from_dict(data, ["name=fam", *SHRINK])
    assert exp.stages()[:3] == ["import_model", "synthesize_data", "align_projector"]
    out = _chain(tmp_path, exp, with_align=True)
    assert out["import_model"].metrics["params_projector"] > 0
    tower = json.loads((tmp_path / "grpo" / "config.json").read_text())["vision_config"]
    assert tower["model_type"] == {"siglip": "siglip_vision_model",
                                   "internvit": "internvl_vision"}[vision]
    assert {"val_loss/substitute", "val_loss/transferred", "val_loss/aligned"} <= set(
        out["align_projector"].metrics)
    assert read_metadata(tmp_path / "substitute")["extra"]["family"] == "causal_lm"
    _check_lineage(out, "llava", tmp_path)


def test_pretrained_smoke_through_kfp_local(tmp_path):
    source = build_checkpoint("qwen2_5_vl", tmp_path / "ckpt")
    result = subprocess.run(
        [sys.executable, "-m", "r1vflow.cli", "run", str(PRESETS / "pretrained-smoke.yaml"),
         "--set", f"model.pretrained.source={source}", "--output-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=900, env=clean_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary["stages"]) == ["import_model", "synthesize_data", "train_reward_model",
                                       "sft", "grpo", "evaluate"]
    assert all(e["status"] == "succeeded" for e in summary["stages"].values())
    from r1vflow.tracking.lineage import walk_lineage

    mlflow.set_tracking_uri(summary["mlflow"]["tracking_uri"])
    chain = walk_lineage(*summary["stages"]["grpo"]["model_version"].rsplit("/", 1))
    assert [n["stage"] for n in chain][0] == "grpo"
    assert chain[-1]["stage"] == "import_model"
    assert chain[-1]["model_version"] == summary["stages"]["import_model"]["model_version"]
