"""Level 2: each KFP component's Python function on temporary artifacts, without KFP's runner.

The chain bootstrap -> synthesize_data -> {align_projector, train_reward_model} -> sft -> evaluate
runs in-process on a micro experiment
with MLflow tracking into a temporary SQLite store, so the registration and lineage code runs too.
"""

import json
from pathlib import Path

import mlflow
import pytest
from kfp.dsl import HTML, Artifact, Dataset, Markdown, Metrics, Model

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
    mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # micro stages last seconds
    parent = start_parent_run(uri, "r1vflow-micro", "micro", {"r1vflow.config_fingerprint": "x"})
    mp.setenv(PARENT_ENV, parent)
    cfg = micro_experiment.model_dump_json()
    out = {"root": root, "uri": uri, "parent": parent}
    base, substitute = _art(Model, root, "base_model"), _art(Model, root, "substitute_llm")
    out["bootstrap"] = json.loads(bootstrap.python_func(
        experiment_json=cfg, base_model=base, substitute_llm=substitute,
        metrics=_art(Metrics, root, "m1"), report=_art(Markdown, root, "r1"),
        html_report=_art(HTML, root, "h1")))
    data = _art(Dataset, root, "dataset")
    out["synthesize_data"] = json.loads(synthesize_data.python_func(
        experiment_json=cfg, dataset=data, metrics=_art(Metrics, root, "m2"),
        report=_art(Markdown, root, "r2"),
        html_report=_art(HTML, root, "h2")))
    aligned, reward = _art(Model, root, "aligned_model"), _art(Model, root, "reward_model")
    out["align_projector"] = json.loads(align_projector.python_func(
        experiment_json=cfg, base_model=base, substitute_llm=substitute, dataset=data,
        model=aligned, metrics=_art(Metrics, root, "m5"), report=_art(Markdown, root, "r5"),
        html_report=_art(HTML, root, "h5")))
    out["train_reward_model"] = json.loads(train_reward_model.python_func(
        experiment_json=cfg, base_model=base, dataset=data, model=reward,
        metrics=_art(Metrics, root, "m6"), report=_art(Markdown, root, "r6"),
        html_report=_art(HTML, root, "h6")))
    model = _art(Model, root, "sft_model")
    out["sft"] = json.loads(sft.python_func(
        experiment_json=cfg, aligned_model=aligned, reward_model=reward, dataset=data,
        model=model, iterations=_art(Artifact, root, "sft_iterations"),
        metrics=_art(Metrics, root, "m3"), report=_art(Markdown, root, "r3"),
        html_report=_art(HTML, root, "h3")))
    report = _art(Markdown, root, "r4")
    out["evaluate"] = json.loads(evaluate.python_func(
        experiment_json=cfg, base_model=base, dataset=data, metrics=_art(Metrics, root, "m4"),
        report=report, predictions=_art(Artifact, root, "predictions"),
        html_report=_art(HTML, root, "h4"), sft_model=model,
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
    assert tags["r1vflow.parent"] == "micro-align-projector/1"
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


def _graded_by_hand(response: str, gold: str) -> tuple[bool, bool]:
    """(correct, format) of one response, graded here without r1vflow.eval.grading: the text
    of a closed <answer>, else the last number or yes/no/left/right word, equal to the gold
    (numbers as numbers, words without case); the format: one <think>...</think> then one
    non-empty <answer>...</answer>, nothing but whitespace around."""
    import re

    closed = re.findall(r"<answer>(.*?)</answer>", response, re.DOTALL)
    found = [closed[-1].strip()] if closed else re.findall(
        r"(?<![\w.])-?\d+(?:\.\d+)?|\b(?:yes|no|left|right)\b", response, re.IGNORECASE)
    answer = found[-1] if found else None
    try:
        correct = answer is not None and float(answer) == float(gold)
    except ValueError:
        correct = answer is not None and answer.lower() == gold.lower()
    tags = all(response.count(t) == 1 for t in ("<think>", "</think>", "<answer>", "</answer>"))
    shape = re.fullmatch(r"\s*<think>.*</think>\s*<answer>(.*)</answer>\s*", response, re.DOTALL)
    return correct, bool(tags and shape and shape.group(1).strip())


def test_evaluate_scores_base_and_sft(chain):
    """Each model's scores equal those recomputed here from its 16 logged responses (the
    predictions table): accuracy and format rate graded by hand, characters counted; every
    response is the micro evaluate.max_new_tokens = 16 tokens long (none of these barely
    trained models ends one early)."""
    mlflow.set_tracking_uri(chain["uri"])
    table = mlflow.load_table("predictions.json", run_ids=[chain["evaluate"]["mlflow_run_id"]])
    metrics = chain["evaluate"]["metrics"]
    assert metrics["eval_size"] == 16
    for label in ("base", "align_projector", "sft"):
        rows = table[table["model"] == label]
        responses, golds = list(rows["response"]), [str(g) for g in rows["gold"]]
        assert len(responses) == 16
        graded = [_graded_by_hand(r, g) for r, g in zip(responses, golds, strict=True)]
        assert metrics[f"accuracy/{label}"] == sum(c for c, _ in graded) / 16, label
        assert metrics[f"format_rate/{label}"] == sum(f for _, f in graded) / 16, label
        assert metrics[f"mean_response_chars/{label}"] == sum(map(len, responses)) / 16, label
        assert metrics[f"mean_response_tokens/{label}"] == 16.0, label
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
                        report=Markdown(name="r", uri=str(tmp_path / "r")),
                        html_report=HTML(name="h", uri=str(tmp_path / "h")))
    failed = json.loads((tmp_path / "stages" / "sft.json").read_text())
    assert failed["status"] == "failed" and "not found" in failed["error"]


def _figures_logged(client, run_id: str) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, "report")}


def test_every_stage_writes_a_self_contained_html_report(chain):
    import re

    client = mlflow.MlflowClient(chain["uri"])
    for stage, n in (("bootstrap", 1), ("synthesize_data", 2), ("align_projector", 5),
                     ("train_reward_model", 6), ("sft", 3), ("evaluate", 4)):
        page = (chain["root"] / f"h{n}").read_text()
        assert chain[stage]["report_html"] == str(chain["root"] / f"h{n}")
        sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
        assert all(s.startswith("data:image/png;base64,") for s in sources), stage
        assert "http://" not in page and "https://" not in page and "<script" not in page
        for key, value in chain[stage]["metrics"].items():
            assert f'data-metric="{key}">{value:.6g}<' in page, (stage, key)
        logged = _figures_logged(client, chain[stage]["mlflow_run_id"])
        assert {"report.html", "report.md"} <= logged
        # one PNG in MLflow per figure on the page
        assert len(sources) == len([f for f in logged if f.endswith(".png")]), stage
    figures = {stage: _figures_logged(client, chain[stage]["mlflow_run_id"])
               for stage in ("bootstrap", "align_projector", "train_reward_model", "sft",
                             "evaluate")}
    assert {"loss.png", "learning_rate.png"} <= figures["bootstrap"]
    assert {"loss.png", "learning_rate.png"} <= figures["align_projector"]
    assert {"score_histograms.png", "calibration.png"} <= figures["train_reward_model"]
    assert {"iteration_sizes.png", "iteration_accuracy.png"} <= figures["sft"]
    assert {"accuracy.png", "lineage.png"} <= figures["evaluate"]


def test_stage_runs_have_readable_names_and_descriptions(chain):
    client = mlflow.MlflowClient(chain["uri"])
    sft_run = client.get_run(chain["sft"]["mlflow_run_id"])
    accuracy = chain["sft"]["metrics"]["val_accuracy"]  # the headline: the last val_accuracy*
    assert sft_run.info.run_name == f"sft · micro · val_accuracy {accuracy:.3g}"
    note = sft_run.data.tags["mlflow.note.content"]
    assert "**sft** stage of the r1vflow experiment **micro**" in note
    assert chain["sft"]["model_version"] in note


def test_evaluate_logs_its_predictions_as_a_table(chain):
    mlflow.set_tracking_uri(chain["uri"])
    table = mlflow.load_table("predictions.json", run_ids=[chain["evaluate"]["mlflow_run_id"]])
    assert len(table) == 3 * 16  # base, align_projector and sft on 16 test samples
    metrics = chain["evaluate"]["metrics"]
    for label in ("base", "align_projector", "sft"):
        rows = table[table["model"] == label]
        assert rows["correct"].mean() == pytest.approx(metrics[f"accuracy/{label}"])
        assert rows["format_ok"].mean() == pytest.approx(metrics[f"format_rate/{label}"])
    assert "## Lineage of the candidate" in chain["report"]
    assert "`micro-sft/3` (sft) <- `micro-sft/2` (sft)" in chain["report"]


def test_versions_describe_their_parent_data_and_run_in_markdown(chain):
    client = mlflow.MlflowClient(chain["uri"])
    description = client.get_model_version("micro-sft", "1").description
    digest = json.loads((chain["root"] / "dataset" / "dataset.json").read_text())["digest"]
    assert "| parent version | [micro-align-projector/1](#/models/micro-align-projector/" \
           "versions/1) |" in description
    assert f"| data digest | `{digest}` |" in description
    run_id = chain["sft"]["mlflow_run_id"]
    assert f"runs/{run_id})" in description
    base = client.get_model_version("micro-bootstrap", "1").description
    assert "| parent version | none (a base model) |" in base


def test_training_stages_log_system_metrics_and_artifacts_stay_beside_the_store(chain):
    client = mlflow.MlflowClient(chain["uri"])
    sft_run = client.get_run(chain["sft"]["mlflow_run_id"])
    assert any(k.startswith("system/cpu_utilization") for k in sft_run.data.metrics)
    evaluate_run = client.get_run(chain["evaluate"]["mlflow_run_id"])
    assert not any(k.startswith("system/") for k in evaluate_run.data.metrics)
    assert sft_run.info.artifact_uri.startswith((chain["root"] / "mlartifacts").as_uri())
