"""Reading commands find their MLflow store without creating one (r1vflow.tracking.locate), and
`artifacts verify` takes the model_uri a local run reports: a directory, checked against the
manifest digest its registered version carries (r1vflow.tracking.verify_local)."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import pytest

from r1vflow.tracking.locate import NoTrackingStore, locate
from r1vflow.tracking.verify_local import MANIFEST_TAG, run_dir_of, verify_model_dir

from conftest import clean_env


def _run_dir(root, name="smoke"):
    run = root / "runs" / name
    run.mkdir(parents=True)
    uri = f"sqlite:///{run / 'mlflow.db'}"
    (run / "summary.json").write_text(json.dumps({"mlflow": {"tracking_uri": uri}}))
    return run, uri


def test_the_order_and_what_chose_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(NoTrackingStore, match="no MLflow store given or found: give"):
        locate()
    run, uri = _run_dir(tmp_path)
    with pytest.raises(NoTrackingStore, match="no such MLflow store"):  # named, never created
        locate(run_dir=run)
    assert not (run / "mlflow.db").exists()
    mlflow.MlflowClient(uri).search_experiments()  # the run's store exists now
    assert locate(run_dir=run).uri == uri and locate(run_dir=run).how == f"the run dir {run}"
    only = locate()  # the only run directory under runs/
    assert (only.uri, only.how) == (uri, "the only run directory, runs/smoke")
    _run_dir(tmp_path, "other")
    with pytest.raises(NoTrackingStore):  # two: which one is not guessed
        locate()
    assert locate("http://127.0.0.1:5000").how == "--tracking-uri"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert locate().line() == "MLflow: http://127.0.0.1:5001 ($MLFLOW_TRACKING_URI)"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(NoTrackingStore, match="nowhere: no stack.json there"):
        locate(stack=tmp_path / "nowhere")


def _registered_model(tmp_path):
    from r1vflow.models.io import write_metadata
    from r1vflow.storage.manifest import build_manifest, manifest_digest

    run, uri = _run_dir(tmp_path)
    model = run / "pipeline_root" / "r1" / "sft" / "model"
    model.mkdir(parents=True)
    (model / "weights.bin").write_bytes(b"\x00" * 64)
    client = mlflow.MlflowClient(uri)
    client.create_registered_model("smoke-sft")
    client.create_model_version("smoke-sft", source=str(model))
    write_metadata(model, {"stage": "sft", "parent": None, "model_version": "smoke-sft/1",
                           "config_fingerprint": "f"})
    client.set_model_version_tag("smoke-sft", "1", MANIFEST_TAG,
                                 manifest_digest(build_manifest(model)))
    return run, uri, model


def test_a_local_model_directory_is_checked_against_its_registered_manifest(tmp_path):
    run, uri, model = _registered_model(tmp_path)
    assert run_dir_of(model) == run.resolve()
    problems, checked = verify_model_dir(model, uri)
    assert problems == [] and "smoke-sft/1 registered" in checked
    (model / "weights.bin").write_bytes(b"\x01" * 64)
    problems, _ = verify_model_dir(model, uri)
    assert len(problems) == 1 and "its files differ from what smoke-sft/1 registered" in problems[0]
    with pytest.raises(ValueError, match="no r1vflow_model.json"):
        verify_model_dir(run, uri)


def test_artifacts_verify_takes_the_model_uri_summary_json_reports(tmp_path):
    run, _, model = _registered_model(tmp_path)
    cli = [sys.executable, "-m", "r1vflow.cli", "artifacts", "verify", str(model)]
    ok = subprocess.run(cli, capture_output=True, text=True, env=clean_env(), timeout=120,
                        cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"ok: {model}"
    assert f"(the run dir {run.resolve()})" in ok.stderr and "Traceback" not in ok.stderr
    (model / "weights.bin").write_bytes(b"\x02" * 64)
    bad = subprocess.run(cli, capture_output=True, text=True, env=clean_env(), timeout=120,
                         cwd=tmp_path)
    assert bad.returncode == 1 and "its files differ" in bad.stderr
