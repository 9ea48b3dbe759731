"""Level 1: the report library (r1vflow.reports) on hand-made metric histories, no stage."""

import base64
import re

import pytest

from r1vflow.reports import ReportData, close_figures, headline_metric, stage_page, summary_page
from r1vflow.reports.stages import (
    BUILDERS,
    accuracy_table,
    calibration_curve,
    figure_builder,
    grpo_figures,
    per_iteration,
    stage_figures,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _lines(fig) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in fig.axes[0].get_lines()}


def _grpo_history() -> dict:
    steps = [1, 2, 3, 4]
    values = {
        "train/loss": [0.5, 0.4, 0.3, 0.2], "train/lr": [1e-4, 1e-4, 5e-5, 0.0],
        "train/reward/accuracy": [0.1, 0.2, 0.3, 0.4], "train/reward/format": [0.5, 0.6, 0.7, 0.8],
        "train/reward_mean": [0.6, 0.8, 1.0, 1.2], "train/accuracy": [0.1, 0.2, 0.3, 0.4],
        "train/format_rate": [0.5, 0.6, 0.7, 0.8],
        "train/effective_ratio_before": [0.25, 0.5, 0.375, 0.125],
        "train/effective_ratio_after": [1.0, 1.0, 0.75, 0.5],
        "train/replay_fraction": [0.75, 0.5, 0.375, 0.375],
        "train/monitor/reward_hacking": [0.0, 0.0, 1.0, 1.0],
        "train/monitor/format_collapse": [0.0, 0.0, 0.0, 0.0],
        "train/monitor/rm_rise": [0.0, 0.0, 0.3, 0.4],  # a measured value, not a flag
    }
    return {k: list(zip(steps, v, strict=True)) for k, v in values.items()}


def test_grpo_figures_draw_the_ssb_before_and_after_and_the_monitor_flags():
    figures = dict(grpo_figures(ReportData("grpo", "t", {}, _grpo_history())))
    assert list(figures) == ["rewards", "accuracy_format", "ssb_effective_ratio",
                             "replay_fraction", "monitor_flags"]
    ssb = _lines(figures["ssb_effective_ratio"])
    assert ssb == {"before SSB": ([1, 2, 3, 4], [0.25, 0.5, 0.375, 0.125]),
                   "after SSB": ([1, 2, 3, 4], [1.0, 1.0, 0.75, 0.5])}
    assert set(_lines(figures["rewards"])) == {"accuracy", "format", "total"}
    assert _lines(figures["replay_fraction"])["replay fraction"][1] == [0.75, 0.5, 0.375, 0.375]
    flags = _lines(figures["monitor_flags"])
    assert set(flags) == {"reward_hacking", "format_collapse"}  # rm_rise is no flag
    assert flags["reward_hacking"][1] == [0.0, 0.0, 1.0, 1.0]
    close_figures(list(figures.items()))


def test_every_stage_gets_loss_and_lr_curves_one_line_per_prefix():
    history = {"train/vision/loss": [(1, 2.0), (2, 1.0)], "train/llm/loss": [(1, 5.0)],
               "train/llm/lr": [(1, 1e-3)], "train/llm/grad_norm": [(1, 3.0)]}
    figures = dict(stage_figures(ReportData("some_new_stage", "t", {}, history)))
    assert list(figures) == ["loss", "learning_rate"]
    assert _lines(figures["loss"]) == {"train/vision": ([1, 2], [2.0, 1.0]),
                                       "train/llm": ([1], [5.0])}
    assert _lines(figures["learning_rate"]) == {"train/llm": ([1], [1e-3])}


def test_a_stage_has_one_figure_builder():
    with pytest.raises(ValueError, match="'grpo' already has a figure builder"):
        figure_builder("grpo")(lambda data: [])
    assert {"grpo", "sft", "train_reward_model", "evaluate"} <= set(BUILDERS)


def test_calibration_curve_by_hand():
    # bins of width 1 on 0..5; a 5.0 falls in the last bin
    centers, shares, counts = calibration_curve([4.5, 5.0, 2.2, 0.1], [0.2, 2.9, 4.1])
    assert centers == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert counts == [2, 0, 2, 0, 3]
    assert shares[0] == 0.5 and shares[2] == 0.5 and shares[4] == pytest.approx(2 / 3)
    assert shares[1] != shares[1]  # nan: an empty bin


def test_per_iteration_and_accuracy_table_read_metric_names():
    metrics = {"train_size/iter_0": 72, "train_size/iter_1": 61, "error_set_size/iter_1": 8,
               "val_accuracy/iter_1": 0.5, "val_accuracy": 0.5, "train_loss/iter_0": 3.0}
    assert per_iteration(metrics, ("train_size", "error_set_size", "val_accuracy")) == {
        "train_size": {0: 72.0, 1: 61.0}, "error_set_size": {1: 8.0}, "val_accuracy": {1: 0.5}}
    table = accuracy_table({"accuracy/base": 0.2, "accuracy_counting/base": 0.5,
                            "accuracy/sft": 0.4, "format_rate/sft": 0.9, "eval_size": 16})
    assert table == {"base": {"all": 0.2, "counting": 0.5}, "sft": {"all": 0.4}}


def test_headline_metric_prefers_the_latest_accuracy():
    assert headline_metric({"accuracy/base": 0.1, "accuracy/sft": 0.3, "x": 1}) == (
        "accuracy/sft", 0.3)
    assert headline_metric({"val_loss": 1.0, "train_loss": 2.0}) == ("train_loss", 2.0)
    assert headline_metric({"steps": 3.0, "val_loss": 1.5}) == ("val_loss", 1.5)
    assert headline_metric({}) is None


def test_stage_page_is_self_contained_with_every_metric_and_figure():
    metrics = {"val_accuracy": 0.123456789, "steps": 4.0}
    page = stage_page(ReportData("grpo", "tiny", metrics, _grpo_history()), "# grpo\n| a | b |")
    sources = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page.html)
    assert [name for name, _ in sources] == [name for name, _ in page.figures]
    assert len(sources) == 7  # loss, lr + the five grpo figures
    assert all(base64.b64decode(data).startswith(PNG_MAGIC) for _, data in sources)
    assert 'data-metric="val_accuracy">0.123457<' in page.html
    assert 'data-metric="steps">4<' in page.html
    assert "<pre># grpo\n| a | b |</pre>" in page.html  # the Markdown, as plain text
    assert not re.search(r"(src|href)=\"https?:", page.html)
    close_figures(page.figures)


def test_summary_page_links_stage_pages_and_charts_accuracy():
    stages = {"sft": {"status": "succeeded", "seconds": 12.5, "metrics": {"val_accuracy": 0.4}},
              "evaluate": {"status": "succeeded", "seconds": 3.0, "cached": True,
                           "metrics": {"accuracy/base": 0.1, "accuracy/sft": 0.4}}}
    page = summary_page("smoke", stages, links={"sft": "sft.html"})
    assert [name for name, _ in page.figures] == ["accuracy", "seconds"]
    assert '<a href="sft.html">sft</a>' in page.html
    assert 'data-metric="evaluate:accuracy/sft">0.4<' in page.html
    assert "succeeded (cached)" in page.html
    bars = page.figures[0][1].axes[0].patches
    assert [round(b.get_height(), 6) for b in bars] == [0.1, 0.4]
    close_figures(page.figures)


def test_summary_page_shows_run_promotion_config_benchmarks_and_cached_times():
    stages = {"sft": {"status": "succeeded", "seconds": 12.5, "cached": True,
                      "metrics": {"val_accuracy": 0.4}},
              "evaluate": {"status": "succeeded", "seconds": 3.0, "metrics": {
                  "accuracy/sft": 0.4, "bench/mathvista/accuracy/base": 0.25,
                  "bench/mathvista/n/base": 4.0, "bench/mathvista/accuracy/sft": 0.5,
                  "bench/mathvista/n/sft": 4.0}}}
    run = {"parent_run_id": "0123abcd", "fingerprint": "f" * 64, "status": "succeeded",
           "seconds": 14.2, "tracking_uri": "sqlite:///x/mlflow.db",
           "promotion": {"candidate": "smoke-grpo/1", "champion": "smoke-grpo/1",
                         "promoted": False, "already_champion": True,
                         "decision": "smoke-grpo/1 (accuracy 0.4) is already the champion"},
           "config": {"name": "smoke", "sft": {"lr": 0.001}}}
    page = summary_page("smoke", stages, run=run)
    html = page.html
    assert "<code>0123abcd</code>" in html and f"<code>{'f' * 64}</code>" in html
    assert '<details id="config"><summary>config (fingerprint ffffffffffffffff)</summary>' in html
    assert "sft:\n  lr: 0.001" in html  # the config, as YAML, collapsed
    assert "smoke-grpo/1 is already the champion" in html
    assert "gate: smoke-grpo/1 (accuracy 0.4) is already the champion" in html
    assert 'data-metric="evaluate:bench/mathvista/accuracy/sft">0.5<' in html
    assert "(n=4)" in html
    assert "12.5 <small>(first run; cached now)</small>" in html
    labels = [t.get_text() for t in page.figures[-1][1].axes[0].get_xticklabels()]
    assert labels == ["sft\n(cached)", "evaluate"]
    close_figures(page.figures)
    promoted = summary_page("smoke", stages, run={**run, "promotion": {
        **run["promotion"], "promoted": True, "already_champion": False}})
    assert "promoted: smoke-grpo/1 is the new champion" in promoted.html
    close_figures(promoted.figures)


def test_the_browser_helper_names_what_is_missing(monkeypatch, tmp_path):
    from browser import _missing

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    assert _missing() == "no chromium on PATH (apt-get install chromium chromium-driver)"
    (tmp_path / "chromium").write_text("#!/bin/sh\n")
    (tmp_path / "chromium").chmod(0o755)
    assert _missing() == "no chromedriver on PATH (apt-get install chromium-driver)"


def test_run_title_and_description_name_stage_experiment_and_headline():
    from r1vflow.runtime.reporting import run_description, run_title

    metrics = {"train_loss": 1.23456, "val_accuracy": 0.5}
    assert run_title("sft", "tiny", metrics) == "sft · tiny · val_accuracy 0.5"
    assert run_title("synthesize_data", "tiny", {}) == "synthesize_data · tiny"
    text = run_description("sft", "tiny", metrics, "tiny-sft/3")
    assert text.startswith("**sft** stage of the r1vflow experiment **tiny**.")
    assert "Headline: `val_accuracy` = **0.5**." in text and "`tiny-sft/3`" in text


def test_version_description_links_parent_run_and_local_kfp_run():
    from r1vflow.tracking.runs import registered_name, version_description

    tags = {"r1vflow.parent": "tiny-align-projector/2", "r1vflow.dataset_digest": "abc",
            "r1vflow.kfp_run": "local:p123", "r1vflow.storage_uri": "s3://b/m",
            "r1vflow.config_fingerprint": "f" * 64}
    text = version_description("sft", tags, "r" * 32, "7")
    assert "| parent version | [tiny-align-projector/2](#/models/tiny-align-projector/" \
           "versions/2) |" in text
    assert f"| trained by | the **sft** stage, run [rrrrrrrr](#/experiments/7/runs/{'r' * 32}) |" \
           in text
    assert "| KFP run | [local:p123](#/experiments/7/runs/p123) |" in text
    assert "| data digest | `abc` |" in text and "| stored at | `s3://b/m` |" in text
    assert registered_name("tiny", "train_reward_model") == "tiny-train-reward-model"
    assert registered_name("tiny", "bootstrap", "-substitute") == "tiny-bootstrap-substitute"


def test_on_a_cluster_the_last_stage_gives_the_parent_run_its_summary_page(tmp_path):
    """No driver writes summary.json on a cluster: the page is rebuilt from the stage runs."""
    import mlflow

    from r1vflow.config import STAGES
    from r1vflow.runtime.cluster import POD_NAMESPACE_ENV
    from r1vflow.runtime.reporting import stages_from_runs, summarize_parent
    from r1vflow.tracking.runs import PARENT_ENV, stage_run, start_parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = start_parent_run(uri, "r1vflow-c", "c", {})
    env = {PARENT_ENV: parent}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PARENT_ENV, parent)
        for stage, metrics in (("sft", {"val_accuracy": 0.25, "stage_seconds": 4.0}),
                               ("evaluate", {"accuracy/sft": 0.5, "stage_seconds": 2.0})):
            with stage_run(uri, "r1vflow-c", stage, "c") as tracker:
                tracker.log_metrics({"train/loss": 1.0}, step=1)
                tracker.log_metrics(metrics)
    assert stages_from_runs(uri, parent) == {
        "sft": {"status": "succeeded", "seconds": 4.0, "metrics": {"val_accuracy": 0.25}},
        "evaluate": {"status": "succeeded", "seconds": 2.0, "metrics": {"accuracy/sft": 0.5}}}
    assert not summarize_parent(uri, STAGES[-1], "c", env)  # not on a cluster: the driver's job
    assert not summarize_parent(uri, "sft", "c", {**env, POD_NAMESPACE_ENV: "ns"})
    assert summarize_parent(uri, STAGES[-1], "c", {**env, POD_NAMESPACE_ENV: "ns"})
    client = mlflow.MlflowClient(uri)
    page = client.download_artifacts(parent, "report/summary.html", str(tmp_path))
    text = open(page).read()
    assert 'data-metric="sft:val_accuracy">0.25<' in text
    assert 'data-metric="evaluate:accuracy/sft">0.5<' in text
    assert "**sft** (succeeded)" in client.get_run(parent).data.tags["mlflow.note.content"]
