"""Outages and a busy output dir: real MLflow and SeaweedFS servers, stopped mid-stage.

- MLflow unreachable at start: one line naming the URI, exit 2, nothing trained, summary.json.
- MLflow down mid-stage: step metrics are buffered, training goes on, one warning; they are
  logged when it is back, and counted as unlogged when it is not.
- S3 down at publish: retried within the budget, then the stage fails with no registered
  version; the trained state stays in the stage's checkpoint and a rerun publishes it without
  training a step.
- The output-dir lock: a second run fails at once; a SIGKILLed holder leaves no lock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import resume_worker

from r1vflow.storage import procs

from conftest import ROOT, clean_env
from servers import MlflowServer, S3Server, requires_weed

R1VFLOW = [sys.executable, "-m", "r1vflow.cli"]


# --------------------------------------------------------------------------- at start


def _after_header(lines: list[str]) -> list[str]:
    """The lines after `r1vflow run`'s header ("r1vflow running NAME (stages) into DIR"), which
    it prints in its first second, before anything can fail."""
    assert lines and lines[0].startswith("r1vflow running smoke ("), lines
    return lines[1:]


def test_run_against_an_unreachable_mlflow_prints_one_line_and_exits_2(tmp_path):
    uri = f"http://127.0.0.1:{procs.free_port()}"
    out = tmp_path / "run"
    proc = subprocess.run([*R1VFLOW, "run", str(ROOT / "pipelines/configs/smoke.yaml"),
                           "--output-dir", str(out), "--set", f"tracking.tracking_uri={uri}"],
                          env=clean_env(), capture_output=True, text=True, timeout=300)
    lines = _after_header((proc.stdout + proc.stderr).strip().splitlines())
    assert proc.returncode == 2
    assert len(lines) == 1 and uri in lines[0] and "unreachable" in lines[0], lines
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and uri in summary["error"]
    assert {s["status"] for s in summary["stages"].values()} == {"not_run"}
    assert not (out / "pipeline_root").exists()  # no task ran


# --------------------------------------------------------------------------- the lock


def test_a_second_run_into_a_busy_output_dir_fails_at_once(tmp_path):
    from r1vflow.storage.atomic import output_lock

    out = tmp_path / "run"
    with output_lock(out):
        started = time.monotonic()
        proc = subprocess.run([*R1VFLOW, "run", str(ROOT / "pipelines/configs/smoke.yaml"),
                               "--output-dir", str(out)], env=clean_env(),
                              capture_output=True, text=True, timeout=300)
        took = time.monotonic() - started
    lines = _after_header((proc.stdout + proc.stderr).strip().splitlines())
    assert proc.returncode == 2 and len(lines) == 1, lines
    assert "is in use by r1vflow run pid" in lines[0] and str(os.getpid()) in lines[0]
    assert not (out / "summary.json").exists()  # the holder's files are not touched
    assert took < 60  # an import of the CLI, no waiting on the lock


def test_a_sigkilled_holder_leaves_no_lock(tmp_path):
    from r1vflow.storage.atomic import OutputDirBusy, output_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom r1vflow.storage.atomic import output_lock"
         "\nwith output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputDirBusy, match=f"pid {holder.pid}"), output_lock(tmp_path):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with output_lock(tmp_path) as path:  # the rerun after a SIGKILL starts
        assert f"pid {os.getpid()}" in path.read_text()


# --------------------------------------------------------------------------- MLflow mid-stage


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path / "mlflow").start()
    yield server
    server.kill()


@pytest.mark.slow
def test_mlflow_stopped_mid_stage_buffers_metrics_and_reconciles(mlflow_server, capsys):
    from r1vflow.tracking.runs import stage_run

    with stage_run(mlflow_server.uri, "outage", "sft", "outage") as tracker:
        tracker.log_metrics({"loss": 1.0}, step=1)
        mlflow_server.kill()
        started = time.monotonic()
        for step in (2, 3, 4):
            tracker.log_metrics({"loss": float(step)}, step=step)  # never raises
        assert time.monotonic() - started < 30  # no minutes-long retry loop per step
        assert tracker.unlogged == 3
        mlflow_server.start()
        assert tracker.reconcile() == 0
        run_id = tracker.run_id
    out = capsys.readouterr().out
    assert out.count("warning: MLflow unreachable") == 1
    history = mlflow.MlflowClient(mlflow_server.uri).get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0),
                                                          (4, 4.0)]


@pytest.mark.slow
def test_metrics_that_never_reach_mlflow_are_counted(mlflow_server, monkeypatch):
    from r1vflow.tracking.runs import stage_run

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    with stage_run(mlflow_server.uri, "outage", "sft", "outage") as tracker:
        mlflow_server.kill()
        tracker.log_metrics({"loss": 1.0, "lr": 0.1}, step=1)
        assert tracker.reconcile() == 2  # what summary.json reports as unlogged_metrics


# --------------------------------------------------------------------------- a stage


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("outage-inputs")
    resume_worker.prepare(root)
    return root


class _Hook:
    """A tracker that runs `action` once, at training step `at` (from inside the stage)."""

    def __init__(self, tracker, at: int, action) -> None:
        self._tracker, self._at, self._action = tracker, at, action

    def __getattr__(self, name):
        return getattr(self._tracker, name)

    def log_metrics(self, metrics, step=None):
        if step == self._at and self._action is not None:
            self._action()
            self._action = None
        return self._tracker.log_metrics(metrics, step=step)


def _sft_ctx(inputs: Path, out: Path, tracker, store):
    from r1vflow.config import load_experiment
    from r1vflow.stages import StageContext

    exp = load_experiment(ROOT / "pipelines/configs/smoke.yaml", [
        *resume_worker.BASE, "sft.iterative=null", "sft.epochs=2", "sft.checkpoint_every=2",
        *(["storage.backend=s3"] if store is not None else [])])
    outputs = {"model": out / "model"}
    outputs["model"].mkdir(parents=True)
    return StageContext(exp=exp, stage="sft", tracker=tracker, store=store, outputs=outputs,
                        inputs={"base_model": inputs / "base_model",
                                "dataset": inputs / "dataset"})


@pytest.mark.slow
@requires_weed
def test_s3_down_at_publish_leaves_no_version_and_a_rerun_publishes_without_training(
        inputs, tmp_path, capsys, monkeypatch):
    from r1vflow.stages import stage_function
    from r1vflow.storage import StoreUnavailable
    from r1vflow.tracking.runs import stage_run

    monkeypatch.setenv("R1VFLOW_ARTIFACT_CACHE", str(tmp_path / "cache"))
    s3 = S3Server(tmp_path / "s3").start()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        store = s3.store(retry_budget_s=3.0, backoff_s=0.2)
        with pytest.raises(StoreUnavailable, match="still failing after"), \
                stage_run(uri, "outage", "sft", "smoke") as tracker:
            ctx = _sft_ctx(inputs, tmp_path / "a", _Hook(tracker, 3, s3.kill), store)
            stage_function("sft")(ctx)
        first = capsys.readouterr().out
        assert "checkpoint: sft step 8" in first  # trained to the end, kept locally
        assert "not uploaded" in first
        assert mlflow.MlflowClient(uri).search_model_versions("name='smoke-sft'") == []
        s3.start()
        # the default budget (120 s) on the rerun: a restarted SeaweedFS answers InternalError
        # until its volume server has registered again
        store = s3.store(retry_budget_s=120.0, backoff_s=0.5)
        with stage_run(uri, "outage", "sft", "smoke") as tracker:
            again_ctx = _sft_ctx(inputs, tmp_path / "b", tracker, store)
            outcome = stage_function("sft")(again_ctx)
        again = capsys.readouterr().out
        pointer = again_ctx.published[(tmp_path / "b" / "model").resolve()]
        assert store.verify(pointer["uri"]) == []
    finally:
        s3.kill()
    assert outcome.metrics["resumed_from_step"] == 8
    assert "checkpoint: sft step" not in again  # not one step trained again
    name, number = outcome.model_version.split("/")
    tags = mlflow.MlflowClient(uri).get_model_version(name, number).tags
    assert tags["r1vflow.status"] == "complete"
    assert tags["r1vflow.manifest_sha256"] == pointer["manifest_sha256"]


@pytest.mark.slow
def test_mlflow_stopped_mid_stage_loses_no_model_and_registers_nothing_half_done(
        inputs, mlflow_server, tmp_path, capsys, monkeypatch):
    from r1vflow.stages import stage_function
    from r1vflow.tracking.runs import stage_run

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not minutes
    exp_name = "smoke"
    with pytest.raises(Exception, match="(?i)connection|max retries|refused"), \
            stage_run(mlflow_server.uri, "outage", "sft", exp_name) as tracker:
        ctx = _sft_ctx(inputs, tmp_path / "a", _Hook(tracker, 3, mlflow_server.kill), None)
        stage_function("sft")(ctx)
    first = capsys.readouterr().out
    assert first.count("warning: MLflow unreachable") == 1  # then training went on
    assert "checkpoint: sft step 8" in first
    mlflow_server.start()
    client = mlflow.MlflowClient(mlflow_server.uri)
    assert client.search_model_versions(f"name='{exp_name}-sft'") == []
    with stage_run(mlflow_server.uri, "outage", "sft", exp_name) as tracker:
        outcome = stage_function("sft")(_sft_ctx(inputs, tmp_path / "b", tracker, None))
    assert outcome.metrics["resumed_from_step"] == 8
    assert "checkpoint: sft step" not in capsys.readouterr().out
    versions = client.search_model_versions(f"name='{exp_name}-sft'")
    assert [v.tags["r1vflow.status"] for v in versions] == ["complete"]


def test_a_stage_task_fails_at_once_naming_an_unreachable_mlflow(tmp_path, monkeypatch):
    """On a cluster the stage task is what meets the outage: one clear error, no training."""
    from r1vflow.config import load_experiment
    from r1vflow.runtime.execute import execute

    uri = f"http://127.0.0.1:{procs.free_port()}"
    exp = load_experiment(ROOT / "pipelines/configs/smoke.yaml",
                          [f"tracking.tracking_uri={uri}"])
    monkeypatch.setenv("R1VFLOW_RUN_DIR", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=f"MLflow at {uri} is unreachable"):
        execute("synthesize_data", exp.model_dump_json(), {},
                {"dataset": str(tmp_path / "dataset")})
    assert time.monotonic() - started < 30
    mirrored = json.loads((tmp_path / "stages" / "synthesize_data.json").read_text())
    assert mirrored["status"] == "failed" and uri in mirrored["error"]
    assert not (tmp_path / "dataset").exists()
