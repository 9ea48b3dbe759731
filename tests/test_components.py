"""Level 2: each KFP component's Python function on temporary artifacts, without KFP's runner.

The chain bootstrap -> synthesize_data -> {align_projector, train_reward_model} -> sft -> evaluate
runs in-process on a micro experiment
with MLflow tracking into a temporary SQLite store, so the registration and lineage code runs too.
"""

import json
from pathlib import Path

import mlflow
import pytest
from kfp.dsl import Artifact, Dataset, Markdown, Metrics, Model

from r1vflow.components.align_projector import align_projector
from r1vflow.components.bootstrap import bootstrap
from r1vflow.components.evaluate import evaluate
from r1vflow.components.sft import sft
from r1vflow.components.synthesize_data import synthesize_data
from r1vflow.components.train_reward_model import train_reward_model
from r1vflow.models.io import read_model_metadata
from r1vflow.stages.common import read_metadata
from r1vflow.tracking.runs import PARENT_ENV, start_parent_run


def _art(cls, root: Path, name: str):
    return cls(name=name, uri=str(root / name))


@pytest.fixture(scope="module")
def chain(tmp_path_factory, micro_experiment):
    root = tmp_path_factory.mktemp("chain")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("R1VFLOW_RUN_DIR", str(root))
    parent = start_parent_run(uri, "r1vflow-micro", "micro", {"r1vflow.config_fingerprint": "x"})
    mp.setenv(PARENT_ENV, parent)
    cfg = micro_experiment.model_dump_json()
    out = {"root": root, "uri": uri, "parent": parent}
    base, substitute = _art(Model, root, "base_model"), _art(Model, root, "substitute_llm")
    out["bootstrap"] = json.loads(bootstrap.python_func(
        experiment_json=cfg, base_model=base, substitute_llm=substitute,
        metrics=_art(Metrics, root, "m1"), report=_art(Markdown, root, "r1")))
    data = _art(Dataset, root, "dataset")
    out["synthesize_data"] = json.loads(synthesize_data.python_func(
        experiment_json=cfg, dataset=data, metrics=_art(Metrics, root, "m2"),
        report=_art(Markdown, root, "r2")))
    aligned, reward = _art(Model, root, "aligned_model"), _art(Model, root, "reward_model")
    out["align_projector"] = json.loads(align_projector.python_func(
        experiment_json=cfg, base_model=base, substitute_llm=substitute, dataset=data,
        model=aligned, metrics=_art(Metrics, root, "m5"), report=_art(Markdown, root, "r5")))
    out["train_reward_model"] = json.loads(train_reward_model.python_func(
        experiment_json=cfg, base_model=base, dataset=data, model=reward,
        metrics=_art(Metrics, root, "m6"), report=_art(Markdown, root, "r6")))
    model = _art(Model, root, "sft_model")
    out["sft"] = json.loads(sft.python_func(
        experiment_json=cfg, aligned_model=aligned, reward_model=reward, dataset=data,
        model=model, iterations=_art(Artifact, root, "sft_iterations"),
        metrics=_art(Metrics, root, "m3"), report=_art(Markdown, root, "r3")))
    report = _art(Markdown, root, "r4")
    out["evaluate"] = json.loads(evaluate.python_func(
        experiment_json=cfg, base_model=base, dataset=data, metrics=_art(Metrics, root, "m4"),
        report=report, predictions=_art(Artifact, root, "predictions"), sft_model=model,
        align_projector_model=aligned))
    out["report"] = Path(report.path).read_text()
    yield out
    mp.undo()


def test_every_stage_succeeds_and_mirrors_its_result(chain):
    for stage in ("bootstrap", "synthesize_data", "align_projector", "train_reward_model", "sft",
                  "evaluate"):
        assert chain[stage]["status"] == "succeeded", chain[stage]
        mirrored = json.loads((chain["root"] / "stages" / f"{stage}.json").read_text())
        assert mirrored["status"] == "succeeded"


def test_models_are_safetensors_dirs_with_lineage(chain):
    for stage in ("bootstrap", "align_projector", "train_reward_model", "sft"):
        model_dir = Path(chain[stage]["model_uri"])
        assert list(model_dir.glob("*.safetensors"))
        assert not [p for p in model_dir.iterdir() if p.suffix in {".bin", ".pt", ".pkl"}]
        meta = read_metadata(model_dir)
        assert meta["model_version"] == chain[stage]["model_version"]
        # the models layer's strict reader accepts a registered model's metadata too
        assert read_model_metadata(model_dir).model_version == chain[stage]["model_version"]
    assert read_metadata(Path(chain["sft"]["model_uri"]))["parent"] == "micro-sft/2"
    aligned_dir = Path(chain["align_projector"]["model_uri"])
    assert read_metadata(aligned_dir)["parent"] == "micro-bootstrap/1"


def test_registered_versions_carry_lineage_tags(chain):
    mlflow.set_tracking_uri(chain["uri"])
    client = mlflow.MlflowClient()
    sft_version = client.get_model_version("micro-sft", "1")  # iteration 0
    tags = sft_version.tags
    assert tags["r1vflow.stage"] == "sft"
    assert tags["r1vflow.parent"] == "micro-align_projector/1"
    assert tags["r1vflow.dataset_digest"] == json.loads(
        (chain["root"] / "dataset" / "dataset.json").read_text())["digest"]
    assert len(tags["r1vflow.config_fingerprint"]) == 64
    base_tags = client.get_model_version("micro-bootstrap", "1").tags
    assert base_tags["r1vflow.parent"] == ""


def test_stage_runs_are_nested_under_the_parent(chain):
    mlflow.set_tracking_uri(chain["uri"])
    runs = mlflow.search_runs(experiment_names=["r1vflow-micro"], output_format="list")
    nested = {r.data.tags.get("r1vflow.stage"): r for r in runs
              if r.data.tags.get("mlflow.parentRunId") == chain["parent"]}
    assert set(nested) == {"bootstrap", "synthesize_data", "align_projector",
                           "train_reward_model", "sft", "evaluate"}
    sft_run = nested["sft"]
    assert float(sft_run.data.params["sft.lr"]) > 0
    assert "train/loss" in sft_run.data.metrics
    history = mlflow.MlflowClient().get_metric_history(sft_run.info.run_id, "train/loss")
    assert len(history) >= 3  # one point per optimizer step


def test_evaluate_scores_base_and_sft(chain):
    metrics = chain["evaluate"]["metrics"]
    for key in ("accuracy/base", "accuracy/sft", "format_rate/base", "format_rate/sft",
                "mean_response_chars/sft", "mean_response_tokens/sft"):
        assert 0.0 <= metrics[key] <= (1.0 if key.startswith(("accuracy", "format")) else 1e6)
    assert metrics["eval_size"] == 16
    assert "| accuracy |" in chain["report"] and "## Examples" in chain["report"]


def test_metrics_artifact_file_is_written(chain):
    # kfp.local only serves a task from cache when every output artifact has a file
    written = json.loads((chain["root"] / "m3").read_text())
    assert written["train_size"] == 48 + 24  # D: the train samples + noisy_fraction 0.5


def test_failing_stage_mirrors_the_error_and_raises(tmp_path, micro_experiment, monkeypatch):
    monkeypatch.setenv("R1VFLOW_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    missing = Model(name="base_model", uri=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="input 'base_model' not found"):
        sft.python_func(experiment_json=micro_experiment.model_dump_json(), base_model=missing,
                        dataset=Dataset(name="d", uri=str(tmp_path / "nodata")),
                        model=Model(name="m", uri=str(tmp_path / "m")),
                        iterations=Artifact(name="i", uri=str(tmp_path / "i")),
                        metrics=Metrics(name="x", uri=str(tmp_path / "x")),
                        report=Markdown(name="r", uri=str(tmp_path / "r")))
    failed = json.loads((tmp_path / "stages" / "sft.json").read_text())
    assert failed["status"] == "failed" and "not found" in failed["error"]
