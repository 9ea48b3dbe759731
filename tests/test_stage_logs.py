"""The local driver's view of each task (r1vflow.pipelines.stage_logs), without KFP running
anything: a fake `execute_single_task` prints what kfp.local's dispatcher prints and returns
what it returns.

- a task served from the cache gets, as its log, the kept log of the run that produced it, and
  its console line names that log;
- noise warnings go to logs/debug.log, progress lines reach the spinner;
- retries are announced with the failure and the delay; a config/input error is not retried.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from kfp.local import status
from kfp.pipeline_spec import pipeline_spec_pb2

from r1vflow.pipelines.stage_logs import (
    DEBUG_LOG,
    KEPT_LOG,
    LineRouter,
    StageLogs,
    permanent_failure,
)

NOISE = ('/x/kfp/local/subprocess_task_handler.py:81: RuntimeWarning: You may be attemping to '
         'run a task that uses custom or non-Python base image "ghcr.io/r1vflow/base:0.1.0" in '
         'a Python environment. Consider using the "DockerRunner".\n  warnings.warn(\n')


def _spec(stage: str, retries: int = 0, delay: int = 5) -> pipeline_spec_pb2.PipelineTaskSpec:
    spec = pipeline_spec_pb2.PipelineTaskSpec()
    spec.task_info.name = stage
    if retries:
        spec.retry_policy.max_retry_count = retries
        spec.retry_policy.backoff_duration.seconds = delay
        spec.retry_policy.backoff_factor = 2
    return spec


class FakeTask:
    """What kfp.local's execute_single_task does for a task: print its stream, return the
    StageResult as `Output`, or fail with the stage's mirrored failure."""

    def __init__(self, run_dir: Path, results: list[dict]):
        self.run_dir, self.results, self.specs = run_dir, list(results), []

    def __call__(self, task_name, task_spec, **_):
        self.specs.append(task_spec)
        result = self.results.pop(0)
        if result.get("cached"):
            return {"Output": json.dumps(result["cached"])}, status.Status.SUCCESS
        print(NOISE, end="")
        print("Executing task 'sft'\n    [progress] sft 3/8 loss 1.2500 · 9 tok/s")
        if result["status"] == "failed":
            mirror = self.run_dir / "stages" / f"{task_name}.json"
            mirror.parent.mkdir(parents=True, exist_ok=True)
            mirror.write_text(json.dumps(result))
            return {}, status.Status.FAILURE
        task_dir = Path(result["task_dir"])
        task_dir.mkdir(parents=True, exist_ok=True)
        return {"Output": json.dumps(result)}, status.Status.SUCCESS


def _logs(tmp_path: Path, fake: FakeTask, sleeps: list | None = None) -> tuple[StageLogs, io.StringIO]:
    console = io.StringIO()
    logs = StageLogs(tmp_path / "logs", tmp_path, console=console,
                     sleep=(sleeps if sleeps is not None else []).append)
    logs.log_dir.mkdir(parents=True)
    logs.run = logs._task(fake)
    return logs, console


def test_a_cached_rerun_keeps_the_log_of_the_run_that_trained(tmp_path):
    task_dir = tmp_path / "pipeline_root" / "run-1" / "sft"
    result = {"stage": "sft", "status": "succeeded", "seconds": 13.3,
              "metrics": {"val_accuracy": 0.5}, "task_dir": str(task_dir)}
    fake = FakeTask(tmp_path, [result, {"cached": result}])
    logs, console = _logs(tmp_path, fake)
    logs.run(task_name="sft", task_spec=_spec("sft"))
    first = (tmp_path / "logs" / "sft.log").read_text()
    assert "[progress] sft 3/8" in first and (task_dir / KEPT_LOG).read_text() == first

    (tmp_path / "logs" / "sft.log").unlink()  # what the next run's install() does
    logs.run(task_name="sft", task_spec=_spec("sft"))
    log = tmp_path / "logs" / "sft.log"
    text = log.read_text()
    assert text.startswith("sft: served from the KFP cache (no task ran)")
    assert str(task_dir / KEPT_LOG) in text.splitlines()[0]
    assert text.endswith(first)  # the first run's log, whole
    cached_line = console.getvalue().splitlines()[-1]
    assert "succeeded (cached)" in cached_line and "ran 13.3 s in an earlier run" in cached_line
    assert str(log) in cached_line


def test_noise_goes_to_the_debug_log_and_progress_to_the_spinner(tmp_path):
    out, debug, shown = io.StringIO(), io.StringIO(), []
    router = LineRouter(out, debug, "sft", shown.append)
    router.write(NOISE + "Setting accelerator to CPU. If you have GPU ...\nloss 1.0\n"
                 "    Loading weights: 100%|##########| 52/52 [00:00<00:00, 29738.72it/s]\n"
                 "    (MainProcess pid=3429) WARNING 12-05 02:02:32 [cpu_worker.py:140] CPU "
                 "backend doesn't allow to use `torch.set_num_threads` after the thread "
                 "binding, skip it.\n")
    router.write("    [progress] sft 1/4 loss 2.0000 · 10 tok/s · 1 s elapsed · ETA 3 s\npart")
    router.flush()
    assert out.getvalue() == ("loss 1.0\n    [progress] sft 1/4 loss 2.0000 · 10 tok/s · 1 s "
                              "elapsed · ETA 3 s\npart\n")
    assert debug.getvalue().count("sft: ") == 5  # warning, source, DeepSpeed, loading, vLLM
    assert shown == ["sft 1/4 loss 2.0000 · 10 tok/s · 1 s elapsed · ETA 3 s"]


def test_the_task_log_has_no_noise_and_the_debug_log_has_it(tmp_path):
    result = {"stage": "sft", "status": "succeeded", "seconds": 1.0, "metrics": {},
              "task_dir": str(tmp_path / "t")}
    logs, _ = _logs(tmp_path, FakeTask(tmp_path, [result]))
    logs.run(task_name="sft", task_spec=_spec("sft"))
    assert "RuntimeWarning" not in (tmp_path / "logs" / "sft.log").read_text()
    assert "sft: " in (tmp_path / "logs" / DEBUG_LOG).read_text()


def test_a_transient_failure_is_retried_with_its_reason_and_delay(tmp_path):
    ok = {"stage": "sft", "status": "succeeded", "seconds": 1.0, "metrics": {},
          "task_dir": str(tmp_path / "t")}
    broken = {"stage": "sft", "status": "failed", "error": "ConnectionError: S3 went away"}
    fake = FakeTask(tmp_path, [broken, broken, ok])
    sleeps: list[float] = []
    logs, console = _logs(tmp_path, fake, sleeps)
    outputs, task_status = logs.run(task_name="sft", task_spec=_spec("sft", retries=3))
    assert task_status == status.Status.SUCCESS and sleeps == [5, 10]
    lines = console.getvalue().splitlines()
    assert "failed (attempt 1 of 4): ConnectionError: S3 went away; retrying in 5 s" in lines[1]
    assert "failed (attempt 2 of 4)" in lines[2] and "retrying in 10 s" in lines[2]
    assert "succeeded" in lines[3]
    assert all(not spec.HasField("retry_policy") for spec in fake.specs)  # ours, not kfp's
    assert (tmp_path / "logs" / "sft.log").read_text().count("Executing task") == 3


def test_a_failure_a_retry_cannot_mend_is_not_retried(tmp_path):
    missing = {"stage": "import_model", "status": "failed",
               "error": "ValueError: 'Qwen/Qwen2.5-VL-7B-Instruct' is no local directory; as a "
                        "hub id it needs a pinned commit in model.pretrained.revisions"}
    fake = FakeTask(tmp_path, [missing])
    sleeps: list[float] = []
    logs, console = _logs(tmp_path, fake, sleeps)
    _, task_status = logs.run(task_name="import_model", task_spec=_spec("import_model", 2, 120))
    assert task_status == status.Status.FAILURE and sleeps == [] and len(fake.specs) == 1
    (line,) = [x for x in console.getvalue().splitlines() if "FAILED" in x]
    assert "ValueError" in line and "not retried" in line
    assert str(tmp_path / "logs" / "import_model.log") in line


@pytest.mark.parametrize(("error", "permanent"), [
    ("ValueError: bad", True), ("FileNotFoundError: [Errno 2] x", True),
    ("huggingface_hub.errors.RevisionNotFoundError: no such revision", True),
    ("RuntimeError: CUDA out of memory", False), ("ConnectionError: reset", False),
    (None, False), ("", False)])
def test_permanent_failures_are_told_by_their_type(error, permanent):
    assert permanent_failure(error) is permanent


def test_a_task_whose_config_slice_is_refused_says_why_and_is_not_retried(tmp_path, monkeypatch):
    """execute() mirrors a slice it cannot read (e.g. code and driver out of step) as a
    ConfigError, which the driver does not retry."""
    from r1vflow.runtime.execute import execute

    monkeypatch.setenv("R1VFLOW_RUN_DIR", str(tmp_path))
    with pytest.raises(Exception, match="unknown key"):
        execute("grpo", json.dumps({"name": "x", "grpo": {"no_such_field": 1}}), {}, {})
    mirrored = json.loads((tmp_path / "stages" / "grpo.json").read_text())
    assert mirrored["status"] == "failed" and mirrored["error"].startswith("ConfigError: ")
    assert permanent_failure(mirrored["error"])
