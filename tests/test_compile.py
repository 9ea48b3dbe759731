"""Compiling experiments for a cluster: per-task Kubernetes settings in the IR, credentials only as
Secret references, the Kubernetes-native manifests, and the committed IR of every preset."""

import difflib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from r1vflow.cli import app
from r1vflow.config import load_experiment
from r1vflow.pipelines.compile import (
    COMPILED_DIR,
    compile_experiment,
    ir_text,
    preset_configs,
    version_name,
)
from r1vflow.runtime.cluster import S3_SECRET_KEYS, SETTINGS_KEYS
from r1vflow.runtime.images import image_for

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "pipelines" / "configs"
SETTINGS = ROOT / "manifests" / "base" / "namespaced" / "settings.yaml"
SECRETS = ROOT / "manifests" / "base" / "namespaced" / "secrets.yaml"
TRAINING_STAGES = ("bootstrap", "align_projector", "sft", "train_reward_model", "mpo", "grpo")
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEACCESSKEY0042",
    "AWS_SECRET_ACCESS_KEY": "fake/secret+key/never-in-yaml-0042",
    "R1VFLOW_S3_ACCESS_KEY": "fake-r1vflow-access-0042",
    "R1VFLOW_S3_SECRET_KEY": "fake-r1vflow-secret-0042",
    "MLFLOW_TRACKING_PASSWORD": "fake-mlflow-password-0042",
    "KFP_TOKEN": "fake-kfp-token-0042",
}


def ir_docs(text: str) -> tuple[dict, dict]:
    """(pipeline spec, Kubernetes platform spec) of an IR YAML."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert len(docs) == 2, "the IR should carry a Kubernetes platform spec"
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def executor(spec: dict, stage: str) -> dict:
    return spec["deploymentSpec"]["executors"][f"exec-{stage.replace('_', '-')}"]["container"]


def task(spec: dict, stage: str) -> dict:
    return spec["root"]["dag"]["tasks"][stage.replace("_", "-")]


# --------------------------------------------------------------------------- the done-when check


@pytest.mark.parametrize(("preset", "expected"), [
    ("r1v2-38b", ["train_reward_model", "mpo", "grpo"]),  # R1V2: no SFT
    ("r1v-38b", ["align_projector", "train_reward_model", "sft", "grpo"])])  # R1V: + distill
def test_38b_training_stages_carry_gpus_placement_and_secret_references(preset, expected):
    exp = load_experiment(PRESETS / f"{preset}.yaml")
    spec, platform = ir_docs(ir_text(exp))
    training = [s for s in exp.stages() if s in TRAINING_STAGES]
    assert training == expected
    for stage in training:
        res = exp.resources.get(stage)
        assert res is not None and res.accelerator_count, f"{preset}: {stage} has no GPUs"
        assert res.node_selector and res.tolerations, f"{preset}: {stage} is not placed"
        container, k8s = executor(spec, stage), platform[f"exec-{stage.replace('_', '-')}"]
        assert k8s["secretAsEnv"] == [{
            "secretName": "r1vflow-s3-credentials", "optional": False,
            "secretNameParameter": {"runtimeValue": {"constant": "r1vflow-s3-credentials"}},
            "keyToEnv": [{"secretKey": "access_key", "envVar": "AWS_ACCESS_KEY_ID"},
                         {"secretKey": "secret_key", "envVar": "AWS_SECRET_ACCESS_KEY"}]}]
        assert "env" not in container, "credentials must not be literal container env"
        assert task(spec, stage)["retryPolicy"]["maxRetryCount"] == res.retries
        assert k8s["activeDeadlineSeconds"] == str(res.timeout_seconds)
        if res.nodes > 1:  # the task launches a TrainJob: GPUs and placement go to its nodes
            assert "accelerator" not in container["resources"]
            continue
        accel = container["resources"]["accelerator"]
        assert (accel["resourceType"], accel["resourceCount"]) == (
            res.accelerator_type, str(res.accelerator_count))
        assert k8s["nodeSelector"]["labels"] == res.node_selector
        assert k8s["tolerations"] == [t.model_dump(exclude_none=True) for t in res.tolerations]
        assert k8s["genericEphemeralVolume"][0]["mountPath"] == "/scratch"
    synth = platform["exec-synthesize-data"]
    assert synth["nodeSelector"]["labels"] == {"r1vflow.io/pool": "cpu"}
    assert "accelerator" not in executor(spec, "synthesize_data")["resources"]


def test_r1v2_mpo_is_eight_h100_on_one_node():
    """The issue's check, spelled out for r1v2-38b's first training task (MPO: R1V2 has no
    SFT)."""
    spec, platform = ir_docs(ir_text(load_experiment(PRESETS / "r1v2-38b.yaml")))
    assert "exec-sft" not in platform
    accel = executor(spec, "mpo")["resources"]["accelerator"]
    assert (accel["resourceType"], accel["resourceCount"]) == ("nvidia.com/gpu", "8")
    assert platform["exec-mpo"]["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert platform["exec-mpo"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_compiling_reads_no_frames_source(monkeypatch):
    """KFP's task setters name their caller through inspect.stack(), which reads every frame's
    source and module (in the test workers, each such read walked all 9,400 modules):
    compiling goes through pipelines.k8s.kfp_caller_names instead, which reads none."""
    import inspect

    read, getframeinfo = [], inspect.getframeinfo
    monkeypatch.setattr(inspect, "getframeinfo",
                        lambda *a, **k: read.append(a) or getframeinfo(*a, **k))
    text = ir_text(load_experiment(PRESETS / "r1v2-38b.yaml"))
    assert not read, f"{len(read)} frames' source read"
    _, platform = ir_docs(text)
    assert platform["exec-grpo"]["nodeSelector"]  # the setters did run


def test_a_setter_on_a_task_without_container_still_names_itself():
    from kfp import dsl

    from r1vflow.pipelines.k8s import kfp_caller_names

    with kfp_caller_names(), pytest.raises(ValueError, match=r"^set_cpu_limit can only be used "
                                           "on single-step components"):
        @dsl.pipeline(name="no-container")
        def importing():
            dsl.importer(artifact_uri="s3://b/m", artifact_class=dsl.Model).set_cpu_limit("1")


def test_no_credential_value_anywhere_in_compiled_yaml(tmp_path, monkeypatch):
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    for preset in ("r1v2-38b", "r1v-38b", "smoke"):
        for flags in ([], ["--k8s-manifests", "--namespace", "kubeflow"]):
            out = tmp_path / f"{preset}{len(flags)}.yaml"
            result = runner.invoke(app, ["compile", str(PRESETS / f"{preset}.yaml"), "-o",
                                         str(out), *flags])
            assert result.exit_code == 0, result.output
            text = out.read_text()
            leaked = [k for k, v in FAKE_CREDENTIALS.items() if v in text]
            assert not leaked, f"{out.name} contains the value of {leaked}"
            # every credential variable a task gets comes from a Secret reference
            for doc in yaml.safe_load_all(text):
                for env in _all_env_entries(doc):
                    assert "AWS_" not in env.get("name", "") or "value" not in env


def _all_env_entries(node) -> list[dict]:
    """Every {'name': ..., 'value': ...} mapping under an `env:` key, recursively."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                found += [e for e in value if isinstance(e, dict)]
            found += _all_env_entries(value)
    elif isinstance(node, list):
        for item in node:
            found += _all_env_entries(item)
    return found


# --------------------------------------------------------------------------- per-task settings


def test_every_task_gets_settings_labels_and_downward_api():
    exp = load_experiment(PRESETS / "smoke.yaml")
    _, platform = ir_docs(ir_text(exp))
    assert sorted(platform) == sorted(
        ["exec-configure", *(f"exec-{s.replace('_', '-')}" for s in exp.stages())])
    # configure tags the MLflow parent run: it gets the settings and the downward API too
    assert platform["exec-configure"]["configMapAsEnv"][0]["configMapName"] == "r1vflow-settings"
    assert "fieldPathAsEnv" in platform["exec-configure"]
    for stage in exp.stages():
        k8s = platform[f"exec-{stage.replace('_', '-')}"]
        assert k8s["podMetadata"]["labels"] == {
            "r1vflow.io/experiment": "smoke", "r1vflow.io/stage": stage.replace("_", "-"),
            "r1vflow.io/fingerprint": exp.fingerprint()[:16]}
        (cm,) = k8s["configMapAsEnv"]
        assert cm["configMapName"] == "r1vflow-settings"
        assert [e["configMapKey"] for e in cm["keyToEnv"]] == list(SETTINGS_KEYS)
        fields = {f["name"]: f["fieldPath"] for f in k8s["fieldPathAsEnv"]}
        assert fields["R1VFLOW_KFP_RUN_ID"] == "metadata.labels['pipeline/runid']"
        assert fields["R1VFLOW_POD_NAMESPACE"] == "metadata.namespace"


def test_settings_and_secret_keys_exist_in_the_manifests():
    """What tasks read must be what manifests/ creates, or pods never start."""
    settings = yaml.safe_load(SETTINGS.read_text())
    assert set(SETTINGS_KEYS) <= set(settings["data"])
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all(SECRETS.read_text())}
    required = secrets["r1vflow-s3-credentials"]["metadata"]["annotations"][
        "r1vflow.io/required-keys"].split(",")
    assert set(S3_SECRET_KEYS) == set(required)


def test_execution_policy_scratch_images_and_extra_secret_from_config():
    exp = load_experiment(PRESETS / "smoke.yaml", [
        "resources.sft.retries=3", "resources.sft.retry_backoff_seconds=30",
        "resources.sft.timeout_seconds=600", "resources.sft.caching=false",
        "resources.sft.scratch_size=20Gi", "resources.sft.scratch_storage_class=fast-ssd",
        "resources.sft.cpu=2", "resources.sft.cpu_limit=4", "resources.sft.memory=3Gi",
        "cluster.images={trainer: registry.example/r1vflow-trainer:dev}",
        "cluster.image_pull_secrets=[regcred]", "cluster.mlflow_secret=mlflow-login"])
    spec, platform = ir_docs(ir_text(exp))
    sft = task(spec, "sft")
    assert sft["retryPolicy"] == {"maxRetryCount": 3, "backoffDuration": "30s",
                                  "backoffFactor": 2.0, "backoffMaxDuration": "3600s"}
    assert sft["cachingOptions"] == {}  # caching off
    assert task(spec, "evaluate")["cachingOptions"] == {"enableCache": True}
    assert "retryPolicy" not in task(spec, "evaluate")
    k8s = platform["exec-sft"]
    assert k8s["activeDeadlineSeconds"] == "600"
    assert k8s["genericEphemeralVolume"] == [{
        "volumeName": "scratch", "mountPath": "/scratch", "accessModes": ["ReadWriteOnce"],
        "size": "20Gi", "storageClassName": "fast-ssd"}]
    res = executor(spec, "sft")["resources"]
    assert (res["resourceCpuRequest"], res["resourceCpuLimit"], res["resourceMemoryRequest"],
            res["resourceMemoryLimit"]) == ("2", "4", "3Gi", "3Gi")
    assert executor(spec, "sft")["image"] == "registry.example/r1vflow-trainer:dev"
    assert executor(spec, "synthesize_data")["image"] == image_for("base")
    assert [s["secretName"] for s in k8s["imagePullSecret"]] == ["regcred"]
    assert [s["secretName"] for s in k8s["secretAsEnv"]] == ["r1vflow-s3-credentials",
                                                            "mlflow-login"]


def test_multi_node_stage_task_only_launches_its_trainjob():
    """r1v-38b's SFT runs on 2 x 8 GPUs as a TrainJob: its KFP task is a small CPU launcher."""
    exp = load_experiment(PRESETS / "r1v-38b.yaml")
    assert exp.resources["sft"].nodes == 2
    spec, platform = ir_docs(ir_text(exp))
    res = executor(spec, "sft")["resources"]
    assert "accelerator" not in res
    assert (res["cpuRequest"], res["cpuLimit"]) == (1.0, 1.0)
    assert "nodeSelector" not in platform["exec-sft"]
    assert "accelerator" in executor(spec, "evaluate")["resources"]


def test_fingerprint_ignores_cluster_section():
    base = load_experiment(PRESETS / "smoke.yaml")
    moved = load_experiment(PRESETS / "smoke.yaml", ["cluster.s3_secret=other",
                                                     "cluster.launcher_cpu=2"])
    assert base.fingerprint() == moved.fingerprint()


# --------------------------------------------------------------------------- k8s-native manifests


def test_k8s_manifests_are_pipeline_and_version_of_the_same_ir(tmp_path):
    exp = load_experiment(PRESETS / "r1v2-38b.yaml")
    out = compile_experiment(exp, tmp_path / "k8s.yaml", k8s_manifests=True,
                             namespace="kubeflow")
    pipeline, version = [d for d in yaml.safe_load_all(out.read_text()) if d]
    for doc in (pipeline, version):
        assert doc["apiVersion"] == "pipelines.kubeflow.org/v2beta1"
        assert doc["metadata"]["namespace"] == "kubeflow"
    assert pipeline["kind"] == "Pipeline" and version["kind"] == "PipelineVersion"
    assert pipeline["metadata"]["name"] == version["spec"]["pipelineName"] == "r1vflow-r1v2-38b"
    ir = ir_text(exp)
    assert version["metadata"]["name"] == version_name(exp, ir)
    spec, _ = ir_docs(ir)
    assert version["spec"]["pipelineSpec"] == spec
    assert "exec-mpo" in version["spec"]["platformSpec"]["platforms"]["kubernetes"][
        "deploymentSpec"]["executors"]


def test_version_name_tracks_config_and_code():
    exp = load_experiment(PRESETS / "smoke.yaml")
    other = load_experiment(PRESETS / "smoke.yaml", ["sft.lr=0.5"])
    assert version_name(exp, "ir") == version_name(exp, "ir")
    assert version_name(exp, "ir") != version_name(exp, "ir changed")
    assert version_name(exp, "ir") != version_name(other, "ir")
    assert version_name(exp, "ir").startswith("r1vflow-smoke-")


# --------------------------------------------------------------------------- committed IR


def test_every_preset_has_committed_ir_and_nothing_stale():
    presets = set(preset_configs())
    compiled = {p.stem for p in COMPILED_DIR.glob("*.yaml")}
    missing, stale = presets - compiled, compiled - presets
    assert not missing and not stale, (
        f"pipelines/compiled/ is out of date (missing: {sorted(missing)}, stale: "
        f"{sorted(stale)}); run `make compiled` and commit the result")


@pytest.mark.parametrize("preset", sorted(preset_configs()))
def test_committed_ir_matches_the_code(preset):
    committed = COMPILED_DIR / f"{preset}.yaml"
    if not committed.exists():
        pytest.fail(f"{committed} is missing; run `make compiled`")
    fresh = ir_text(load_experiment(preset_configs()[preset]))
    old = committed.read_text()
    if fresh != old:
        diff = list(difflib.unified_diff(old.splitlines(), fresh.splitlines(),
                                         f"committed {committed.name}", "compiled now",
                                         lineterm="", n=1))
        shown = "\n".join(line if len(line) < 240 else line[:240] + " [...]"
                          for line in diff[:60]) + ("\n..." if len(diff) > 60 else "")
        pytest.fail(f"pipelines/compiled/{preset}.yaml drifted from the code "
                    f"({len(diff)} diff lines). Run `make compiled` and commit it.\n{shown}")


def test_committed_ir_is_deterministic():
    text = (COMPILED_DIR / "smoke.yaml").read_text()
    assert "/tmp/" not in text and str(ROOT) not in text
    import re

    assert not re.search(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", text), "a timestamp was compiled in"
