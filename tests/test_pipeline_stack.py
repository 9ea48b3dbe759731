"""Issue 5 end to end: a micro DAG run with `--stack` against real S3 (SeaweedFS) and MLflow
servers that the test starts on loopback with `r1vflow stack up` and stops with `stack down`."""

import json
import subprocess
import sys

import mlflow
import pytest

from conftest import MICRO, PRESETS, clean_env
from servers import requires_weed

pytestmark = [pytest.mark.slow, requires_weed]
CLI = [sys.executable, "-m", "r1vflow.cli"]
LINEAGE_TAGS = ("r1vflow.stage", "r1vflow.parent", "r1vflow.storage_uri",
                "r1vflow.manifest_sha256", "r1vflow.config_fingerprint", "r1vflow.kfp_run",
                "r1vflow.git_commit", "r1vflow.dataset_digest")


def _cli(*args, env=None):
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=900,
                            env={**clean_env(), **(env or {})})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def stack_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stackrun")
    stack = root / "stack"
    _cli("stack", "up", "--dir", str(stack))
    try:
        overrides = [a for o in MICRO for a in ("--set", o)]
        _cli("run", str(PRESETS / "smoke.yaml"), "--stack", str(stack), "--output-dir",
             str(root / "out"), *overrides, env={"R1VFLOW_GIT_COMMIT": "0123abc"})
        summary = json.loads((root / "out" / "summary.json").read_text())
        info = json.loads((stack / "stack.json").read_text())
        yield stack, summary, info
    finally:
        subprocess.run([*CLI, "stack", "down", "--dir", str(stack)], capture_output=True,
                       timeout=120)


def test_models_are_s3_pointers_whose_manifests_verify(stack_run):
    stack, summary, _ = stack_run
    models = {s: e["model_uri"] for s, e in summary["stages"].items() if e.get("model_uri")}
    assert "bootstrap" in models and "sft" in models
    for stage, uri in models.items():
        assert uri.startswith("s3://"), (stage, uri)
        _cli("artifacts", "verify", uri, "--stack", str(stack))


def test_every_version_has_all_lineage_tags(stack_run):
    _, summary, info = stack_run
    assert summary["mlflow"]["tracking_uri"] == info["mlflow_uri"]
    mlflow.set_tracking_uri(info["mlflow_uri"])
    client = mlflow.MlflowClient()
    for stage, entry in summary["stages"].items():
        if not entry.get("model_uri"):  # evaluate names a candidate but produces no model
            continue
        name, version = entry["model_version"].rsplit("/", 1)
        tags = client.get_model_version(name, version).tags
        missing = [t for t in LINEAGE_TAGS if t not in tags]
        assert not missing, (stage, missing)
        assert tags["r1vflow.storage_uri"] == entry["model_uri"]
        assert tags["r1vflow.git_commit"] == "0123abc"
        assert tags["r1vflow.kfp_run"]
        run = client.get_run(entry["mlflow_run_id"])
        assert run.inputs.dataset_inputs, f"{stage} logged no data set input"


def test_lineage_walks_from_the_final_model_to_bootstrap(stack_run):
    _, summary, info = stack_run
    final = [e for s, e in summary["stages"].items() if e.get("model_version")
             and s not in ("bootstrap", "train_reward_model")][-1]
    name, version = final["model_version"].rsplit("/", 1)
    out = _cli("lineage", name, version, "--json", "--tracking-uri", info["mlflow_uri"])
    chain = json.loads(out.stdout)
    assert chain[0]["model_version"] == final["model_version"]
    assert chain[-1]["stage"] == "bootstrap" and chain[-1]["parent"] is None
    assert all(node["datasets"] for node in chain)
