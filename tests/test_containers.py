"""`r1vflow run --runner docker`: the DAG's tasks in the images `make images` builds.

Pure parts first (the containers' environment, each task's image read from the IR, the image user,
handing the output dir over, summary fields), then the smoke DAG through the real CLI with every
task in its podman container (marked `container`; it needs root, podman and the images: `.ci/run`
builds them, `make images` does locally, and the tests skip naming what is missing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import mlflow
import pytest
import yaml

from r1vflow.config.loading import load_experiment
from r1vflow.config.stage_table import TABLE
from r1vflow.pipelines.containers import (
    CONTAINERS_CONF,
    ContainerError,
    chown_tree,
    container_env,
    image_user,
    task_images,
)
from r1vflow.pipelines.local_run import _runner_fields
from r1vflow.runtime.images import image_for
from r1vflow.storage.store import StoreConfigError

from conftest import MICRO, PRESETS, ROOT, clean_env
from servers import requires_weed

CLI = [sys.executable, "-m", "r1vflow.cli"]
STAGE_IMAGES = {stage.name: image_for(stage.image) for stage in TABLE}


def test_containers_conf_is_the_one_in_images() -> None:
    assert tomllib.loads(CONTAINERS_CONF) == tomllib.loads(
        (ROOT / "images" / "containers.conf").read_text())
    assert tomllib.loads(CONTAINERS_CONF) == {"containers": {"default_ulimits": []},
                                              "engine": {"runtime": "runc"}}


def test_container_env_passes_settings_and_credentials_not_the_file(tmp_path: Path) -> None:
    creds = tmp_path / "s3.json"
    creds.write_text(json.dumps({"access_key": "AK", "secret_key": "SK"}))
    environ = {"R1VFLOW_S3_ENDPOINT": "http://127.0.0.1:9000", "R1VFLOW_S3_CREDENTIALS_FILE":
               str(creds), "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "AWS_REGION": "x",
               "PATH": "/usr/bin", "HOME": "/root", "GITHUB_TOKEN": "t"}
    assert container_env(environ) == {
        "R1VFLOW_S3_ENDPOINT": "http://127.0.0.1:9000", "MLFLOW_TRACKING_URI":
        "http://127.0.0.1:5000", "AWS_REGION": "x",
        "R1VFLOW_S3_ACCESS_KEY": "AK", "R1VFLOW_S3_SECRET_KEY": "SK"}


def test_container_env_refuses_an_unreadable_credentials_file(tmp_path: Path) -> None:
    bad = tmp_path / "s3.json"
    bad.write_text("{}")
    with pytest.raises(StoreConfigError, match="must be JSON with 'access_key'"):
        container_env({"R1VFLOW_S3_CREDENTIALS_FILE": str(bad)})


def test_task_images_are_the_component_images_of_the_compiled_ir() -> None:
    spec = next(yaml.safe_load_all((ROOT / "pipelines" / "compiled" / "smoke.yaml").read_text()))
    images = task_images(spec)
    # configure and the two promotion tasks (components/promote.py) run in the base image;
    # promote sits inside the promotion condition's sub-DAG
    assert "promote" not in spec["root"]["dag"]["tasks"]
    smoke_stages = load_experiment(PRESETS / "smoke.yaml").stages()  # bootstrap, not import_model
    assert images == {**{s: STAGE_IMAGES[s] for s in smoke_stages}, **dict.fromkeys(
        ("configure", "decide_promotion", "promote"), image_for("base"))}


@pytest.mark.parametrize(("user", "expected"), [("10001:10001", (10001, 10001)),
                                                ("10001", (10001, 10001)),
                                                ("10001:20002", (10001, 20002))])
def test_image_user_reads_numeric_users(user: str, expected: tuple[int, int]) -> None:
    assert image_user({"Config": {"User": user}}) == expected


@pytest.mark.parametrize("user", ["", "0", "0:0", "r1v", "10001:r1v"])
def test_image_user_refuses_root_and_names(user: str) -> None:
    with pytest.raises(ContainerError, match="numeric non-root uid"):
        image_user({"Config": {"User": user}, "RepoTags": ["x:1"]})


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_chown_tree_hands_over_everything_but_link_targets(tmp_path: Path) -> None:
    root, outside = tmp_path / "out", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("x")
    outside.write_text("y")
    (root / "link").symlink_to(outside)
    chown_tree(root, 12345, 23456)
    for path in (root, root / "a", root / "a" / "b", root / "a" / "b" / "f"):
        assert (path.stat().st_uid, path.stat().st_gid) == (12345, 23456), path
    assert (root / "link").lstat().st_uid == 12345
    assert outside.stat().st_uid == os.getuid()


@pytest.mark.skipif(os.geteuid() != 0, reason="--runner docker refuses non-root users first")
def test_a_docker_host_that_does_not_answer_is_named(tmp_path: Path, monkeypatch) -> None:
    from r1vflow.pipelines.containers import docker_runner

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    with pytest.raises(ContainerError, match=f"no Docker API answers at DOCKER_HOST=unix://{tmp_path}"):
        with docker_runner(tmp_path, {image_for("base")}, {}):
            pass


def test_runner_fields_name_runner_image_and_the_log_of_a_failure(tmp_path: Path) -> None:
    stages = {"bootstrap": {"status": "succeeded"}, "sft": {"status": "not_run"},
              "grpo": {"status": "failed", "error": "ValueError: x"},
              "evaluate": {"status": "not_run"}}
    images = {"bootstrap": "t:1", "sft": "t:1", "grpo": "t:1", "evaluate": "r:1"}
    _runner_fields(stages, "docker", images, {"sft", "grpo"}, tmp_path)
    assert stages == {
        "bootstrap": {"status": "succeeded", "runner": "docker", "image": "t:1"},
        "sft": {"status": "failed", "runner": "docker", "image": "t:1", "log":
                str(tmp_path / "sft.log"),
                "error": "the task failed before the stage reported: see its log"},
        "grpo": {"status": "failed", "error": "ValueError: x", "runner": "docker",
                 "image": "t:1", "log": str(tmp_path / "grpo.log")},
        "evaluate": {"status": "not_run", "runner": "docker", "image": "r:1"}}
    plain = {"sft": {"status": "succeeded"}}
    _runner_fields(plain, "subprocess", {}, set(), tmp_path)
    assert plain == {"sft": {"status": "succeeded", "runner": "subprocess", "image": None}}


# --------------------------------------------------------------------------- in the containers

CONTAINERS_CONF_FILE = ROOT / "images" / "containers.conf"


@pytest.fixture(scope="module")
def built_images() -> set[str]:
    """The component images, skipping (with the reason) where podman cannot run them here."""
    if os.geteuid() != 0:
        pytest.skip("--runner docker needs root (podman as root hands the output dir over)")
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (as root: apt-get install podman runc debootstrap)")
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF_FILE)}
    images = set(STAGE_IMAGES.values())
    missing = [i for i in sorted(images) if subprocess.run(
        ["podman", "image", "exists", i], env=env, timeout=60).returncode != 0]
    if missing:
        pytest.skip(f"images not built: {', '.join(missing)} (run `make images` first)")
    return images


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in clean_env().items() if k != "DOCKER_HOST"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=1800, env=env)


@pytest.fixture(scope="module")
def docker_smoke(built_images, tmp_path_factory):
    """The smoke DAG with every task in its image, shrunk by MICRO (fewer steps and samples:
    what is checked here is where each task ran and what it left, not what it learned)."""
    out = tmp_path_factory.mktemp("docker-smoke")
    overrides = [a for o in MICRO for a in ("--set", o)]
    result = _run("run", str(PRESETS / "smoke.yaml"), "--runner", "docker", "--output-dir",
                  str(out), *overrides)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.container
def test_smoke_runs_every_stage_in_its_image(docker_smoke):
    out, summary = docker_smoke
    assert summary["status"] == "succeeded"
    assert list(summary["stages"]) == ["bootstrap", "synthesize_data", "align_projector",
                                       "train_reward_model", "sft", "grpo", "evaluate"]
    for stage, entry in summary["stages"].items():
        assert entry["status"] == "succeeded", (stage, entry)
        assert (entry["runner"], entry["image"]) == ("docker", STAGE_IMAGES[stage])
        log = (out / "logs" / f"{stage}.log").read_text()
        # the container runner names the image before it starts the container
        assert f"r1vflow: running in image '{STAGE_IMAGES[stage]}'" in log, stage
    for stage in ("bootstrap", "align_projector", "sft", "train_reward_model", "grpo"):
        assert Path(summary["stages"][stage]["model_uri"]).is_dir()
    # the rollout image carries vLLM's CPU build: GRPO sampled on it in its container, synced
    # once at the start and after every optimizer step
    grpo = summary["stages"]["grpo"]["metrics"]
    assert grpo["weight_syncs"] == grpo["steps"] + 1, grpo
    assert "generation: vllm (" in (out / "logs" / "grpo.log").read_text()
    # the containers' user had the output dir for the run only; the invoking user has it back
    owners = {p.lstat().st_uid for p in [out, *out.rglob("*")]}
    assert owners == {os.getuid()}


@pytest.mark.slow
@pytest.mark.container
def test_containers_tracked_runs_and_versions_in_mlflow(docker_smoke):
    out, summary = docker_smoke
    mlflow.set_tracking_uri(summary["mlflow"]["tracking_uri"])
    client = mlflow.MlflowClient()
    parent = client.get_run(summary["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    for stage, entry in summary["stages"].items():
        run = client.get_run(entry["mlflow_run_id"])
        assert run.info.status == "FINISHED", stage
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["r1vflow.stage"] == stage
    for stage in ("bootstrap", "align_projector", "sft", "grpo"):
        name, version = summary["stages"][stage]["model_version"].rsplit("/", 1)
        assert client.get_model_version(name, version).run_id == \
            summary["stages"][stage]["mlflow_run_id"]
    promotion = summary["promotion"]
    assert promotion["promoted"] and promotion["champion"] == promotion["candidate"]


@pytest.mark.slow
@pytest.mark.container
def test_a_stage_failing_in_its_container_names_stage_image_and_log(built_images, tmp_path):
    # storage.backend=s3 without an endpoint: bootstrap's first act in its container refuses it
    result = _run("run", str(PRESETS / "smoke.yaml"), "--runner", "docker", "--output-dir",
                  str(tmp_path), "--set", "storage.backend=s3")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    log = tmp_path / "logs" / "bootstrap.log"
    failed = [line for line in result.stdout.splitlines() if "FAILED" in line]
    assert failed and "bootstrap" in failed[0], result.stdout[-3000:]
    assert f"image: {STAGE_IMAGES['bootstrap']}" in failed[0] and str(log) in failed[0]
    entry = json.loads((tmp_path / "summary.json").read_text())["stages"]["bootstrap"]
    assert (entry["status"], entry["image"], entry["log"]) == (
        "failed", STAGE_IMAGES["bootstrap"], str(log))
    assert "no endpoint is set" in entry["error"]
    text = log.read_text()
    assert f"r1vflow: running in image '{STAGE_IMAGES['bootstrap']}'" in text
    assert f"the container of image '{STAGE_IMAGES['bootstrap']}' exited with status 1" in text


PASSED = ("R1VFLOW_", "MLFLOW_", "AWS_")  # what the runner passes at run time


@pytest.mark.container
def test_images_hold_no_settings_or_credentials(built_images):
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF_FILE)}
    for image in sorted(built_images):
        inspect = subprocess.run(["podman", "image", "inspect", image], capture_output=True,
                                 text=True, env=env, timeout=120, check=True)
        config = json.loads(inspect.stdout)[0]["Config"]
        baked = [v for v in config.get("Env", []) if v.startswith(PASSED)]
        assert not baked, (image, baked)
        assert config["User"] == "10001:10001", image


@pytest.mark.container
def test_rollout_image_carries_vllms_model_class_cache(built_images):
    """Built into the image (r1vflow.generation.modelinfo), for every family's class and the
    text LLM; the file names are vLLM's (module and class; its InternVL class lives in its
    interns1 module)."""
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF_FILE)}
    listed = subprocess.run(["podman", "run", "--rm", image_for("rollout"), "ls",
                             "/home/r1v/.cache/vllm/modelinfos"], capture_output=True, text=True,
                            env=env, timeout=300, check=True)
    assert set(listed.stdout.split()) == {
        "vllm-model_executor-models-interns1-InternS1ForConditionalGeneration.json",
        "vllm-model_executor-models-llava-LlavaForConditionalGeneration.json",
        "vllm-model_executor-models-qwen2-Qwen2ForCausalLM.json",
        "vllm-model_executor-models-qwen2_5_vl-Qwen2_5_VLForConditionalGeneration.json",
        "vllm-model_executor-models-qwen3_vl-Qwen3VLForConditionalGeneration.json"}


@pytest.fixture(scope="module")
def docker_stack_run(built_images, tmp_path_factory):
    """The micro smoke DAG in the containers against `r1vflow stack up`'s S3 and MLflow."""
    root = tmp_path_factory.mktemp("docker-stack")
    stack = root / "stack"
    up = _run("stack", "up", "--dir", str(stack))
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    try:
        overrides = [a for o in MICRO for a in ("--set", o)]
        result = _run("run", str(PRESETS / "smoke.yaml"), "--runner", "docker", "--stack",
                      str(stack), "--output-dir", str(root / "out"), *overrides)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        yield (root / "out", json.loads((root / "out" / "summary.json").read_text()),
               json.loads((stack / "stack.json").read_text()))
    finally:
        _run("stack", "down", "--dir", str(stack))


@pytest.mark.slow
@pytest.mark.container
@pytest.mark.extended  # a second whole DAG in containers; the docker smoke runs in CI
@requires_weed
def test_containers_reach_the_stack_s3_and_mlflow_with_credentials_as_env(docker_stack_run):
    out, summary, info = docker_stack_run
    assert summary["status"] == "succeeded"
    assert summary["mlflow"]["tracking_uri"] == info["mlflow_uri"]
    mlflow.set_tracking_uri(info["mlflow_uri"])
    client = mlflow.MlflowClient()
    for stage, entry in summary["stages"].items():
        assert (entry["runner"], entry["image"]) == ("docker", STAGE_IMAGES[stage])
        assert client.get_run(entry["mlflow_run_id"]).info.status == "FINISHED", stage
    for stage in ("bootstrap", "align_projector", "sft", "grpo"):
        assert summary["stages"][stage]["model_uri"].startswith("s3://"), stage
    secret = json.loads(Path(info["credentials_file"]).read_text())["secret_key"]
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".log", ".json")]
    assert written and not [p for p in written if secret in p.read_text(errors="replace")]
