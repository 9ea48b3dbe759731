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


def _wait_for_text(driver, texts: list[str], timeout: float = 90.0) -> str:
    """The page's visible text once it holds every one of `texts` (MLflow's UI is a React app
    that renders after its API calls return)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        body = d.find_element("tag name", "body").text
        return body if all(t in body for t in texts) else False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=1).until(ready)
    except TimeoutException:
        body = driver.find_element("tag name", "body").text
        missing = [t for t in texts if t not in body]
        raise AssertionError(f"{driver.current_url} never showed {missing}; it shows:\n"
                             f"{body[:3000]}") from None


def test_mlflow_ui_shows_version_lineage_and_the_pipeline_run_with_its_stages(stack_run,
                                                                               tmp_path):
    """The MLflow UI of the `stack up` server, in headless Chromium: the final model version's
    page shows its r1vflow.parent tag and its description's lineage; the pipeline's parent run
    page lists every stage run as a child run and carries the summary page."""
    from browser import browser

    _, summary, info = stack_run
    ui = info["mlflow_uri"].rstrip("/")
    client = mlflow.MlflowClient(info["mlflow_uri"])
    final = summary["stages"]["grpo"]["model_version"]
    name, version = final.rsplit("/", 1)
    parent_tag = client.get_model_version(name, version).tags["r1vflow.parent"]
    assert parent_tag == summary["stages"]["sft"]["model_version"]
    parent_id = summary["mlflow"]["parent_run_id"]
    parent = client.get_run(parent_id)
    stage_runs = [client.get_run(e["mlflow_run_id"]).info.run_name
                  for e in summary["stages"].values()]
    assert all(" · micro" in run_name for run_name in stage_runs)
    artifacts = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert {"report/summary.html", "report/accuracy.png"} <= artifacts
    with browser(1400, 1400) as driver:
        driver.get(f"{ui}/#/models/{name}/versions/{version}")
        _wait_for_text(driver, [f"Version {version}", "r1vflow.parent", parent_tag,
                                "parent version"])
        driver.save_screenshot(str(tmp_path / "version.png"))
        driver.get(f"{ui}/#/experiments/{parent.info.experiment_id}/runs/{parent_id}")
        _wait_for_text(driver, ["Child runs", *stage_runs, "r1vflow pipeline run of micro"])
        driver.save_screenshot(str(tmp_path / "parent-run.png"))
