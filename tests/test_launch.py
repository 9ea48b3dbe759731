"""Multi-process stages: the launch decision, a real 2-process torchrun launch (DeepSpeed ZeRO-2
over gloo), the TrainJob manifest against the vendored v2.3.0 CRD schema, and the TrainJob watch
loop against in-memory Kubernetes APIs."""

import functools
import importlib.resources
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
from kubernetes_validate.utils import latest_version
from referencing import Registry, Resource

from r1vflow.config import ResourceSpec, load_experiment
from r1vflow.runtime.launch import (
    WorkerResult,
    WorkerSpec,
    _locate,
    launch_local,
    launch_mode,
    outcome_from_result,
    torchrun_command,
)
from r1vflow.runtime.podspec import container_resources
from r1vflow.runtime.trainjob import (
    TrainJobFailed,
    build_trainjob,
    run_trainjob,
    trainjob_for_stage,
    trainjob_name,
    trainjob_state,
)
from r1vflow.stages import StageOutcome

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "pipelines" / "configs"
SCHEMA = ROOT / "manifests" / "schemas" / "trainjob-trainer.kubeflow.org-v1alpha1.json"


# --------------------------------------------------------------------------- launch decision


@pytest.mark.parametrize(("nodes", "procs", "cluster", "mode"), [
    (1, 1, False, "inline"), (1, 1, True, "inline"),
    (1, 2, False, "torchrun"), (2, 1, False, "torchrun"), (2, 4, False, "torchrun"),
    (1, 8, True, "torchrun"), (2, 8, True, "trainjob"),
])
def test_launch_mode(nodes, procs, cluster, mode):
    assert launch_mode(nodes, procs, cluster) == mode


def test_torchrun_command_runs_the_worker_module():
    cmd = torchrun_command(4, Path("/w/spec.json"), python="/py")
    assert cmd == ["/py", "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                   "--nproc_per_node=4", "-m", "r1vflow.runtime.launch", "worker", "--spec",
                   "@/w/spec.json"]


def test_outcome_maps_rank0_model_into_task_outputs(tmp_path):
    result = WorkerResult(stage="sft", world_size=16, metrics={"loss": 0.5}, report="r",
                          model_output="model", model_relpath="final", model_version="m/3",
                          history={"train/loss": [(1, 0.9), (2, 0.7)]},
                          report_data={"val_chosen": [1.0]})
    outcome = outcome_from_result(WorkerResult.model_validate_json(result.model_dump_json()),
                                  {"model": tmp_path / "out"})
    assert outcome.model_dir == tmp_path / "out" / "final"
    assert outcome.history == {"train/loss": [(1, 0.9), (2, 0.7)]}
    assert outcome.report_data == {"val_chosen": [1.0]}
    assert (outcome.metrics, outcome.model_version, outcome.report) == ({"loss": 0.5}, "m/3", "r")
    with pytest.raises(RuntimeError, match="output 'weights'"):
        outcome_from_result(result.model_copy(update={"model_output": "weights"}),
                            {"model": tmp_path})


def test_locate_model_inside_outputs(tmp_path):
    assert _locate(tmp_path / "m" / "x", {"model": tmp_path / "m"}) == ("model", "x")
    assert _locate(None, {"model": tmp_path}) == (None, None)
    with pytest.raises(RuntimeError, match="outside its outputs"):
        _locate(tmp_path / "elsewhere", {"model": tmp_path / "m"})


# --------------------------------------------------------------------------- 2-process torchrun


def zero2_entry(ctx):
    """Test entry point run by every rank: 3 DeepSpeed ZeRO-2 steps (gloo) on a tiny MLP, each
    rank on different data, so the ranks agree on the weights only if gradients are averaged."""
    import torch
    from safetensors.torch import save_file

    from r1vflow.train.engine import TrainEngine

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    engine = TrainEngine(model, lr=0.05, weight_decay=0.0, warmup_ratio=0.0, total_steps=3,
                         backend="deepspeed", zero_stage=2)
    data = torch.Generator().manual_seed(100 + rank)
    for step in range(1, 4):
        x = torch.randn(8, 4, generator=data)
        loss = torch.nn.functional.mse_loss(engine.model(x), x.sum(1, keepdim=True))
        engine.step(loss)
        ctx.tracker.log_metrics({"train/loss": float(loss)}, step=step)  # the report's curve
    flat = torch.cat([p.detach().flatten() for p in engine.release().parameters()])
    (ctx.input("markers") / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world": world, "weights": flat.tolist(),
        "tracking": ctx.tracker.enabled, "output": str(ctx.outputs["model"])}))
    ctx.tracker.log_metrics({"rank_seen": float(rank)})
    save_file({"weights": flat.contiguous()}, str(ctx.outputs["model"] / "weights.safetensors"))
    return StageOutcome(metrics={"rank": float(rank), "loss": float(loss)},
                        model_dir=ctx.outputs["model"], report=f"rank {rank} of {world}")


@pytest.mark.slow
def test_two_process_launch_runs_both_ranks_and_rank0_writes_output(tmp_path):
    import mlflow

    markers, out = tmp_path / "markers", tmp_path / "model"
    markers.mkdir()
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("launch")).info.run_id
    exp = load_experiment(PRESETS / "smoke.yaml", ["resources.sft.procs_per_node=2",
                                                   "sft.backend=deepspeed", "sft.zero_stage=2"])
    worker = WorkerSpec(stage="sft", experiment_json=exp.model_dump_json(),
                        inputs={"markers": str(markers)}, outputs={"model": str(out)},
                        mlflow_run_id=run_id, tracking_uri=tracking_uri,
                        entry="test_launch:zero2_entry")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    result = launch_local(worker, nproc=2, env=env)

    ranks = {r: json.loads((markers / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert [ranks[r]["world"] for r in (0, 1)] == [2, 2]
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], abs=1e-6)
    assert ranks[0]["tracking"] and not ranks[1]["tracking"]
    assert ranks[0]["output"] == str(out) and ranks[1]["output"] != str(out)
    assert not Path(ranks[1]["output"]).exists(), "rank 1's throwaway output was not removed"
    assert sorted(p.name for p in out.iterdir()) == ["weights.safetensors"]
    assert result.world_size == 2 and result.metrics["rank"] == 0.0
    assert (result.model_output, result.model_relpath) == ("model", ".")
    assert result.report == "rank 0 of 2"
    assert [step for step, _ in result.history["train/loss"]] == [1, 2, 3]  # rank 0's, once
    history = client.get_metric_history(run_id, "rank_seen")
    assert [m.value for m in history] == [0.0]


def failing_entry(ctx):
    if os.environ["RANK"] == "1":
        raise ValueError("rank 1 breaks on purpose")
    return StageOutcome(metrics={})


def test_a_failing_rank_fails_the_launch(tmp_path):
    exp = load_experiment(PRESETS / "smoke.yaml")
    worker = WorkerSpec(stage="sft", experiment_json=exp.model_dump_json(), inputs={},
                        outputs={"model": str(tmp_path / "m")}, entry="test_launch:failing_entry")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    with pytest.raises(RuntimeError, match=r"stage sft: torchrun with 2 processes failed"):
        launch_local(worker, nproc=2, env=env)


# --------------------------------------------------------------------------- TrainJob manifest


@functools.cache
def trainjob_validator() -> jsonschema.Draft202012Validator:
    defs_file = (importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
                 / f"v{latest_version()}-local-strict" / "_definitions.json")
    defs = json.loads(defs_file.read_text())
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    registry = Registry().with_resources([(defs["$id"], Resource.from_contents(defs)),
                                          (schema["$id"], Resource.from_contents(schema))])
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(doc: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.path))}: {e.message[:200]}"
            for e in trainjob_validator().iter_errors(doc)]


def r1v_sft_trainjob(environ=None) -> tuple[dict, WorkerSpec]:
    exp = load_experiment(PRESETS / "r1v-38b.yaml")
    worker = WorkerSpec(stage="sft", experiment_json=exp.model_dump_json(),
                        inputs={"base_model": "s3://r1vflow/staging/x/inputs/base_model"},
                        outputs={"model": ""}, staging="staging/x", mlflow_run_id="abc")
    environ = {"R1VFLOW_KFP_RUN_ID": "6f1c-run"} if environ is None else environ
    return trainjob_for_stage(worker.model_dump_json(), exp, "sft", exp.resources["sft"],
                              "0123456789abcdef", environ), worker


def test_r1v_sft_trainjob_validates_and_carries_the_stage(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-never-in-manifest")
    job, worker = r1v_sft_trainjob()
    assert schema_errors(job) == []
    assert job["metadata"] == {
        "name": "r1v-38b-sft-01234567", "namespace": "r1vflow",
        "labels": {"r1vflow.io/experiment": "r1v-38b", "r1vflow.io/stage": "sft",
                   "r1vflow.io/fingerprint": load_experiment(
                       PRESETS / "r1v-38b.yaml").fingerprint()[:16],
                   "r1vflow.io/kfp-run-id": "6f1c-run"}}
    spec = job["spec"]
    assert spec["runtimeRef"]["name"] == "r1vflow-deepspeed"
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert trainer["resourcesPerNode"]["requests"] == {"cpu": "96", "memory": "1600Gi",
                                                      "nvidia.com/gpu": "8"}
    assert trainer["command"][:5] == ["torchrun", "-m", "r1vflow.runtime.launch", "worker", "--spec"]
    assert WorkerSpec.model_validate_json(trainer["command"][5]) == worker
    assert all("valueFrom" in e and "value" not in e for e in trainer["env"])
    assert {e["name"] for e in trainer["env"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert "fake-secret-never-in-manifest" not in json.dumps(job)
    (patch,) = spec["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert node["name"] == "node"
    assert pod["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                           "effect": "NoSchedule"}]
    assert pod["metadata"]["labels"]["r1vflow.io/stage"] == "sft"
    assert spec["activeDeadlineSeconds"] == 259200


def test_trainjob_namespace_and_runtime_come_from_settings_or_config():
    job, _ = r1v_sft_trainjob({"R1VFLOW_TRAINJOB_NAMESPACE": "ml",
                               "R1VFLOW_TRAINING_RUNTIME": "rt"})
    assert (job["metadata"]["namespace"], job["spec"]["runtimeRef"]["name"]) == ("ml", "rt")
    assert "r1vflow.io/kfp-run-id" not in job["metadata"]["labels"]


@pytest.mark.parametrize(("mutate", "complaint"), [
    (lambda j: j["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "2"}),
     "env"),
    (lambda j: j["spec"]["trainer"].update(numNodes=0), "numNodes"),
    (lambda j: j["spec"]["trainer"].update(numProcPerNode="auto"), "numProcPerNode"),
    (lambda j: j["spec"]["trainer"].update(podSpecOverrides=[]), "trainer"),
    (lambda j: j["metadata"].update(name="1-starts-with-a-digit"), "metadata.name"),
    (lambda j: j["spec"].pop("runtimeRef"), "spec"),
    (lambda j: j["spec"].update(managedBy="me"), "managedBy"),
    (lambda j: j["spec"]["trainer"]["resourcesPerNode"].update(limit={}), "resourcesPerNode"),
])
def test_trainjob_schema_rejects_typical_mistakes(mutate, complaint):
    job, _ = r1v_sft_trainjob()
    mutate(job)
    errors = schema_errors(job)
    assert errors and any(e.startswith(complaint) or complaint in e for e in errors), errors


def test_trainjob_name_is_a_short_dns_label():
    assert trainjob_name("r1v2-38b", "train_reward_model", "ab12cd34ef") == \
        "r1v2-38b-train-reward-model-ab12cd34"
    long = trainjob_name("x" * 80, "sft", "deadbeef")
    assert len(long) <= 40 and long.endswith("-deadbeef")
    assert trainjob_name("9lives", "sft", "deadbeef").startswith("r-9lives")


def test_container_resources_requests_and_limits():
    spec = ResourceSpec(cpu="8", cpu_limit="16", memory="64Gi", accelerator_type="nvidia-h100-80gb",
                        accelerator_count=4)
    assert container_resources(spec) == ({"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "4"},
                                     {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "4"})
    assert container_resources(ResourceSpec()) == ({}, {})


def test_minimal_trainjob_validates():
    job = build_trainjob(name="a", namespace="n", runtime="r", image="i", nodes=2,
                         procs_per_node=1, command=["torchrun"], env=[], requests={},
                         limits={}, node_selector={}, tolerations=[], labels={})
    assert schema_errors(job) == []
    assert "resourcesPerNode" not in job["spec"]["trainer"]


# --------------------------------------------------------------------------- watching a TrainJob


def test_trainjob_state_from_conditions():
    def job(*conds):
        return {"status": {"conditions": [dict(zip(("type", "status", "reason", "message"), c,
                                                   strict=True)) for c in conds]}}

    assert trainjob_state({}) == ("running", "")
    assert trainjob_state(job(("Suspended", "False", "Resumed", ""))) == ("running", "")
    assert trainjob_state(job(("Complete", "True", "JobsCompleted", "done"))) == \
        ("succeeded", "JobsCompleted: done")
    assert trainjob_state(job(("Failed", "True", "DeadlineExceeded", "too slow"))) == \
        ("failed", "DeadlineExceeded: too slow")
    assert trainjob_state(job(("Failed", "False", "", ""))) == ("running", "")


class FakeCustomApi:
    """The CustomObjectsApi calls run_trainjob makes, answering from a list of states."""

    def __init__(self, conditions_per_poll):
        self.polls, self.created, self.deleted = list(conditions_per_poll), None, []

    def create_namespaced_custom_object(self, group, version, ns, plural, body):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        self.created = body

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        conditions = self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]
        return {"metadata": {"name": name}, "status": {"conditions": conditions}}

    def delete_namespaced_custom_object(self, group, version, ns, plural, name, **kwargs):
        self.deleted.append(name)


class FakeCoreApi:
    def __init__(self, logs, exit_code=0):
        self.logs, self.exit_code, self.selectors = logs, exit_code, []

    def list_namespaced_pod(self, ns, label_selector):
        self.selectors.append(label_selector)
        term = SimpleNamespace(exit_code=self.exit_code, reason="Error")
        state = SimpleNamespace(terminated=term if self.exit_code else None)
        return SimpleNamespace(items=[SimpleNamespace(
            metadata=SimpleNamespace(name=pod),
            status=SimpleNamespace(phase="Running", container_statuses=[
                SimpleNamespace(name="node", state=state)]))
            for pod in self.logs])

    def read_namespaced_pod_log(self, pod, ns, container, follow, _preload_content):
        assert (container, follow, _preload_content) == ("node", True, False)
        text = self.logs[pod].encode()
        return SimpleNamespace(stream=lambda size: iter([text[:5], text[5:]]))


def manifest() -> dict:
    return build_trainjob(name="job", namespace="ns", runtime="r", image="i", nodes=2,
                          procs_per_node=1, command=["torchrun"], env=[], requests={},
                          limits={}, node_selector={}, tolerations=[], labels={})


def test_run_trainjob_streams_node_logs_and_cleans_up_on_success():
    custom = FakeCustomApi([[], [{"type": "Complete", "status": "True", "reason": "Done"}]])
    core = FakeCoreApi({"job-node-0-0-a": "rank 0 up\nloss 1.0\n", "job-node-0-1-b": "rank 1"})
    lines = []
    run_trainjob(manifest(), custom, core, poll_s=0, sink=lines.append, sleep=lambda s: None)
    assert custom.created["metadata"]["name"] == "job"
    assert "[job-node-0-0-a] rank 0 up" in lines and "[job-node-0-0-a] loss 1.0" in lines
    assert "[job-node-0-1-b] rank 1" in lines
    assert core.selectors[0] == "jobset.sigs.k8s.io/jobset-name=job"
    assert custom.deleted == ["job"]


def test_run_trainjob_fails_with_the_jobs_reason_and_keeps_the_job():
    custom = FakeCustomApi([[{"type": "Failed", "status": "True", "reason": "FailedJobs",
                              "message": "jobset failed"}]])
    core = FakeCoreApi({"job-node-0-1-b": "Traceback ..."}, exit_code=137)
    with pytest.raises(TrainJobFailed, match=r"TrainJob ns/job failed: FailedJobs: jobset "
                                             r"failed \[job-node-0-1-b: Error \(exit 137\)\]"):
        run_trainjob(manifest(), custom, core, poll_s=0, sink=lambda s: None,
                     sleep=lambda s: None)
    assert custom.deleted == []


def test_run_trainjob_times_out_and_deletes_the_job():
    clock = iter(range(0, 1000, 100))
    custom = FakeCustomApi([[]])
    with pytest.raises(TrainJobFailed, match="still running after 250 s"):
        run_trainjob(manifest(), custom, FakeCoreApi({}), timeout_s=250, poll_s=0,
                     sink=lambda s: None, sleep=lambda s: None, clock=lambda: next(clock))
    assert custom.deleted == ["job"]


def test_run_trainjob_reports_a_rejected_create():
    class Rejecting(FakeCustomApi):
        def create_namespaced_custom_object(self, *args):
            raise type("ApiException", (Exception,), {"status": 422, "reason": "Invalid"})()

    with pytest.raises(TrainJobFailed, match="could not create TrainJob ns/job: 422 Invalid"):
        run_trainjob(manifest(), Rejecting([[]]), FakeCoreApi({}), sink=lambda s: None)


def test_worker_module_has_a_cli():
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "r1vflow.runtime.launch", "worker", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--spec" in proc.stdout


# --------------------------------------------------------------------------- through a component


@pytest.mark.slow
def test_component_with_two_procs_runs_its_stage_under_torchrun(tmp_path, monkeypatch,
                                                                micro_experiment):
    """components/runtime.execute dispatches a 2-process stage to torchrun; rank 0's outputs
    and MLflow records are the task's, exactly as for an in-process stage."""
    import mlflow
    from kfp.dsl import HTML, Dataset, Markdown, Metrics

    from r1vflow.components.synthesize_data import synthesize_data

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    exp = micro_experiment.model_copy(update={"resources": {
        "synthesize_data": ResourceSpec(procs_per_node=2)}})
    dataset = Dataset(name="dataset", uri=str(tmp_path / "dataset"))
    result = json.loads(synthesize_data.python_func(
        experiment_json=exp.model_dump_json(), dataset=dataset,
        metrics=Metrics(name="m", uri=str(tmp_path / "m")),
        report=Markdown(name="r", uri=str(tmp_path / "r")),
        html_report=HTML(name="h", uri=str(tmp_path / "h"))))
    assert result["status"] == "succeeded"
    page = (tmp_path / "h").read_text()  # rank 0's metrics reached the task's report
    for key, value in result["metrics"].items():
        assert f'data-metric="{key}">{value:.6g}<' in page
    info = json.loads((Path(dataset.path) / "dataset.json").read_text())
    assert info["counts"]["train"] == exp.synthesize_data.num_train
    run = mlflow.MlflowClient(uri).get_run(result["mlflow_run_id"])
    assert run.data.metrics["stage_seconds"] > 0
    assert set(result["metrics"]) <= set(run.data.metrics)
    # rank 0 logged the data set into the stage's run; rank 1 logged nothing anywhere
    (logged,) = run.inputs.dataset_inputs
    assert logged.dataset.name == f"{exp.name}-synthetic"
    client = mlflow.MlflowClient(uri)
    every_run = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in every_run] == [run.info.run_id]
    assert run.info.status == "FINISHED"


# --------------------------------------------------------------------------- TrainJob round trip


def copy_entry(ctx):
    """Test entry point: reads the staged input, writes a model dir into the output."""
    text = (ctx.input("base_model") / "weights.txt").read_text()
    (ctx.outputs["model"] / "final").mkdir(parents=True)
    (ctx.outputs["model"] / "final" / "weights.txt").write_text(text + " + trained")
    return StageOutcome(metrics={"steps": 3.0}, model_dir=ctx.outputs["model"] / "final",
                        report="trained on the TrainJob")


def test_trainjob_launch_stages_inputs_and_returns_rank0_outputs(tmp_path, monkeypatch):
    """launch_trainjob end to end with a file object store and a stand-in Kubernetes API whose
    'cluster' runs the TrainJob's worker command in-process (rank 0 of 1)."""
    import r1vflow.runtime.trainjob as trainjob
    from r1vflow.runtime.launch import run_worker

    store_dir = tmp_path / "store"
    monkeypatch.setenv("R1VFLOW_STORE_DIR", str(store_dir))
    monkeypatch.delenv("R1VFLOW_S3_ENDPOINT", raising=False)
    exp = load_experiment(PRESETS / "r1v-38b.yaml")
    base = tmp_path / "base_model"
    base.mkdir()
    (base / "weights.txt").write_text("base")

    class ClusterApi(FakeCustomApi):
        def create_namespaced_custom_object(self, group, version, ns, plural, body):
            super().create_namespaced_custom_object(group, version, ns, plural, body)
            spec = WorkerSpec.model_validate_json(body["spec"]["trainer"]["command"][5])
            assert spec.staging and all(v.startswith("file://") for v in spec.inputs.values())
            run_worker(spec, environ={"RANK": "0", "WORLD_SIZE": "16",
                                      "R1VFLOW_STORE_DIR": str(store_dir),
                                      "R1VFLOW_SCRATCH": str(tmp_path / "node-scratch")})

    custom = ClusterApi([[{"type": "Complete", "status": "True", "reason": "Done"}]])
    monkeypatch.setattr(trainjob, "kubernetes_apis", lambda: (custom, FakeCoreApi({})))
    worker = WorkerSpec(stage="sft", experiment_json=exp.model_dump_json(),
                        inputs={"base_model": str(base)}, outputs={"model": ""},
                        entry="test_launch:copy_entry")
    out = tmp_path / "kfp-output-model"
    result = trainjob.launch_trainjob(worker, exp, exp.resources["sft"], {"base_model": base},
                                      {"model": out})
    assert (out / "final" / "weights.txt").read_text() == "base + trained"
    assert (result.model_output, result.model_relpath, result.world_size) == ("model", "final", 16)
    assert result.metrics == {"steps": 3.0} and result.report == "trained on the TrainJob"
    assert custom.created["spec"]["trainer"]["numNodes"] == 2
    assert custom.deleted == [custom.created["metadata"]["name"]]
    leftovers = [p for p in store_dir.rglob("*") if p.is_file()]
    assert leftovers == [], f"staging prefix not cleaned up: {leftovers[:3]}"
