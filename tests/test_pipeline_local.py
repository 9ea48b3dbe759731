"""Level 3: the smoke DAG through kfp.local (SubprocessRunner), driven by the real CLI."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from conftest import PRESETS, clean_env

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "r1vflow.cli"]


@contextlib.contextmanager
def _clean_process_env():
    """Run the driver in this process with the environment the CLI tests give their child."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(clean_env())
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _run(*args, cwd=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env=clean_env())


@pytest.fixture(scope="module")
def smoke_run(smoke_dag):
    """The session's smoke run (conftest.smoke_dag), then the same command again into its
    output dir. Later runs into `out` (cached, changed, failed) rewrite its reports/ and
    summary.json; the browser test checks the first run's pages (smoke_dag.first) against the
    first run's summary."""
    out, summary = smoke_dag.out, smoke_dag.summary
    second = _run("run", str(PRESETS / "smoke.yaml"), "--output-dir", str(out))
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((out / "summary.json").read_text())
    # the cached rerun's logs and summary page, as it left them (later runs rewrite both)
    shutil.copytree(out / "logs", _second(out) / "logs")
    shutil.copy(out / "reports" / "summary.html", _second(out) / "summary.html")
    (_second(out) / "console.txt").write_text(second.stdout + second.stderr)
    return out, summary, again


def _second(out: Path) -> Path:
    return out.parent / f"{out.name}-cached-rerun"


def _cached(summary: dict) -> dict[str, bool]:
    return {stage: entry["cached"] for stage, entry in summary["stages"].items()}


@pytest.fixture(scope="module")
def changed_runs(smoke_run):
    """The smoke run again with a changed evaluate.limit, then with a changed grpo.lr."""
    out = smoke_run[0]
    runs = {}
    for name, override in (("limit", "evaluate.limit=8"), ("lr", "grpo.lr=3e-4")):
        result = _run("run", str(PRESETS / "smoke.yaml"), "--output-dir", str(out),
                      "--set", override)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[name] = json.loads((out / "summary.json").read_text())
    return runs


def test_changed_evaluate_limit_reruns_only_evaluate(smoke_run, changed_runs):
    summary = changed_runs["limit"]
    assert summary["status"] == "succeeded"
    assert _cached(summary) == {"bootstrap": True, "synthesize_data": True,
                                "align_projector": True, "train_reward_model": True,
                                "sft": True, "grpo": True, "evaluate": False}
    assert summary["stages"]["evaluate"]["metrics"]["eval_size"] == 8.0
    assert smoke_run[1]["stages"]["evaluate"]["metrics"]["eval_size"] > 8.0


def test_changed_grpo_lr_reruns_only_grpo_and_evaluate(smoke_run, changed_runs):
    summary = changed_runs["lr"]
    assert summary["status"] == "succeeded"
    assert _cached(summary) == {"bootstrap": True, "synthesize_data": True,
                                "align_projector": True, "train_reward_model": True,
                                "sft": True, "grpo": False, "evaluate": False}
    first = smoke_run[1]["stages"]
    assert summary["stages"]["sft"]["model_uri"] == first["sft"]["model_uri"]
    assert summary["stages"]["grpo"]["model_uri"] != first["grpo"]["model_uri"]


def test_overrides_parameter_acts_as_set(smoke_run, changed_runs):
    """The compiled pipeline's `overrides` parameter (what a KFP UI run edits) gives the tasks
    the same config slices as `--set`: after the --set grpo.lr run, the same change through the
    parameter is served wholly from cache, and the parent run records it."""
    from r1vflow.config import load_experiment
    from r1vflow.pipelines.local_run import run_local

    out = smoke_run[0]
    with _clean_process_env():
        summary = run_local(load_experiment(PRESETS / "smoke.yaml"), out,
                            overrides=["grpo.lr=3e-4"])
    assert summary["status"] == "succeeded"
    assert all(_cached(summary).values()), _cached(summary)
    assert summary["stages"]["grpo"]["model_uri"] == changed_runs["lr"]["stages"]["grpo"]["model_uri"]
    parent = mlflow.MlflowClient(summary["mlflow"]["tracking_uri"]).get_run(
        summary["mlflow"]["parent_run_id"])
    assert json.loads(parent.data.tags["r1vflow.overrides"]) == ["grpo.lr=3e-4"]


def test_bad_override_fails_the_configure_task_naming_the_field(smoke_run):
    from r1vflow.config import load_experiment
    from r1vflow.pipelines.local_run import run_local

    out = smoke_run[0]
    with _clean_process_env():
        summary = run_local(load_experiment(PRESETS / "smoke.yaml"), out,
                            overrides=["grpo.lr=-1"])
    assert summary["status"] == "failed"
    assert all(entry["status"] == "not_run" for entry in summary["stages"].values())
    assert "grpo.lr" in summary["error"] and "greater than 0" in summary["error"]


def test_summary_has_every_stage_succeeded(smoke_run):
    out, summary, _ = smoke_run
    assert summary["status"] == "succeeded"
    assert len(summary["config_fingerprint"]) == 64
    assert list(summary["stages"]) == ["bootstrap", "synthesize_data", "align_projector",
                                       "train_reward_model", "sft", "grpo", "evaluate"]
    for stage, entry in summary["stages"].items():
        assert entry["status"] == "succeeded", (stage, entry)
        assert entry["seconds"] > 0 and entry["mlflow_run_id"]
        assert entry["cached"] is False
    for stage in ("bootstrap", "align_projector", "sft", "train_reward_model", "grpo"):
        assert Path(summary["stages"][stage]["model_uri"]).is_dir()
    metrics = summary["stages"]["evaluate"]["metrics"]
    assert {"accuracy/base", "accuracy/align_projector", "accuracy/sft", "accuracy/grpo"} <= set(
        metrics)


def test_smoke_grpo_rolls_out_on_vllm_with_a_sync_per_step(smoke_run):
    """The smoke preset generates on vLLM (generation: auto, vLLM installed): GRPO synced the
    policy into the engine once before training and after each of its 4 optimizer steps, and
    vLLM's log-probabilities match the trainer's (float32 on the CPU)."""
    out, summary, _ = smoke_run
    grpo = summary["stages"]["grpo"]["metrics"]
    assert grpo["steps"] == 4.0 and grpo["weight_syncs"] == 5.0
    assert grpo["rollout_tokens_per_s"] > 0
    assert grpo["logprob_gap_mean"] < 1e-4 and grpo["logprob_gap_max"] < 1e-3
    logs = sorted((out / "pipeline_root").glob("*/grpo/task.log"))  # each run that trained
    assert logs
    for log in logs:
        assert "generation: vllm (auto: vLLM is installed and serves this model)" in (
            log.read_text())


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


def test_a_cached_rerun_keeps_the_logs_of_the_run_that_trained(smoke_run):
    """Each logs/<stage>.log after the cached rerun is the first run's log under a header that
    names where it is kept; the rerun's console line for the stage names that log."""
    out, summary, again = smoke_run
    logs, console = _second(out) / "logs", (_second(out) / "console.txt").read_text()
    for stage in summary["stages"]:
        text = (logs / f"{stage}.log").read_text()
        first_line = text.splitlines()[0]
        assert first_line.startswith(f"{stage}: served from the KFP cache (no task ran). Below: "
                                     "the log of the run that produced its output"), first_line
        kept = Path(first_line.rsplit("kept at ", 1)[1])
        assert kept.is_file() and kept.is_relative_to(out / "pipeline_root")
        assert text.endswith(kept.read_text()) and "Executing task" in text
        (line,) = [x for x in console.splitlines()
                   if x[11:].startswith(f"{stage} ") and "succeeded" in x]
        assert "succeeded (cached)" in line and f"its log: {out / 'logs' / stage}.log" in line
    assert "[progress] sft " in (logs / "sft.log").read_text()
    assert "RuntimeWarning: You may be attemping" not in (logs / "sft.log").read_text()
    assert "RuntimeWarning: You may be attemping" in (logs / "debug.log").read_text()


def test_promoted_in_the_summary_and_the_gate_log_agree(smoke_run):
    out, summary, again = smoke_run
    assert summary["promotion"]["promoted"] and not summary["promotion"]["already_champion"]
    promotion = again["promotion"]
    assert (promotion["promoted"], promotion["already_champion"]) == (False, True)
    log = (_second(out) / "logs" / "decide_promotion.log").read_text()
    assert f"promotion not needed: {promotion['decision']}" in log
    assert "is already the champion" in promotion["decision"] and "blocked" not in log
    page = (_second(out) / "summary.html").read_text()
    assert f"{promotion['candidate']} is already the champion" in page
    assert again["mlflow"]["parent_run_id"] in page


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


def test_smoke_scores_its_published_layout_benchmark(smoke_run):
    """evaluate.benchmarks in the DAG: every model on the preset's MathVista-layout file, the
    responses in the evaluate task's `predictions` artifact."""
    out, summary, _ = smoke_run
    metrics = summary["stages"]["evaluate"]["metrics"]
    models = ("base", "align_projector", "sft", "grpo")
    assert [metrics[f"bench/mathvista/n/{m}"] for m in models] == [4.0] * 4
    files = sorted(out.glob("pipeline_root/*/evaluate/predictions/mathvista/grpo.predictions.jsonl"))
    rows = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert [r["id"] for r in rows] == ["1", "2", "3", "4"]
    assert metrics["bench/mathvista/accuracy/grpo"] == sum(r["correct"] for r in rows) / 4


def test_smoke_reports_open_in_headless_chromium_with_every_image(smoke_run, smoke_dag,
                                                                  tmp_path):
    """Each stage's page and the summary page, in a real browser: a screenshot, every image
    decoded (naturalWidth > 0), and every number on the page equal to summary.json's."""
    from browser import browser, images_loaded, page_metrics

    from r1vflow.reports import headline_metric

    out, summary, _ = smoke_run
    assert summary["report"] == str(out / "reports" / "summary.html")
    reports = smoke_dag.first / "reports"  # the first run's pages, as that run wrote them
    pages = {stage: reports / Path(entry["report"]).name
             for stage, entry in summary["stages"].items()}
    assert set(pages) == set(summary["stages"])
    with browser() as driver:
        for stage, page in [*pages.items(), ("summary", reports / "summary.html")]:
            driver.get(page.as_uri())
            shot = tmp_path / f"{stage}.png"
            assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
            images = images_loaded(driver)
            assert images, f"{stage}: no figure on the page"
            broken = [i["alt"] for i in images if not (i["complete"] and i["width"] > 0)]
            assert not broken, f"{stage}: images that did not load: {broken}"
            shown = page_metrics(driver)
            if stage == "summary":  # each stage's headline metric, the benchmark scores
                expected = {f"{name}:{key}": value for name, entry in summary["stages"].items()
                            for key, value in [headline_metric(entry["metrics"])]}
                expected.update({f"evaluate:{key}": value for key, value in
                                 summary["stages"]["evaluate"]["metrics"].items()
                                 if key.startswith("bench/") and "/accuracy/" in key})
            else:
                expected = summary["stages"][stage]["metrics"]
            assert set(shown) == set(expected), stage
            for key, value in expected.items():
                assert float(shown[key]) == pytest.approx(value, rel=1e-5), (stage, key)
    assert '<img alt="ssb_effective_ratio"' in pages["grpo"].read_text()


def test_compare_prints_runs_metrics_and_the_config_diff(smoke_run, changed_runs):
    _, summary, _ = smoke_run
    changed = changed_runs["lr"]
    result = subprocess.run(
        [*CLI, "compare", summary["mlflow"]["parent_run_id"], changed["mlflow"]["parent_run_id"],
         "--tracking-uri", summary["mlflow"]["tracking_uri"]],
        capture_output=True, text=True, timeout=300, env={**clean_env(), "COLUMNS": "250"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    diff = lines[next(i for i, line in enumerate(lines) if "config diff" in line):]
    keys = {line.split("│")[1].strip() for line in diff if line.count("│") >= 3}
    assert keys == {"grpo.lr", "r1vflow.overrides"}  # the change and its record
    (lr_row,) = [line for line in diff if line.count("│") >= 3
                 and line.split("│")[1].strip() == "grpo.lr"]
    assert [cell.strip() for cell in lr_row.split("│")[2:4]][1] == "0.0003"
    (accuracy_row,) = [line for line in lines if "│ accuracy/grpo " in line]
    values = [cell.strip() for cell in accuracy_row.split("│")[2:4]]
    assert values == [f"{s['stages']['evaluate']['metrics']['accuracy/grpo']:.4g}"
                      for s in (summary, changed)]
