"""Run the DAG's tasks in their container images: kfp.local's DockerRunner against podman.

`r1vflow run CONFIG --runner docker` (the default runner stays the subprocess one):

- The Docker API is `$DOCKER_HOST` when set, else a `podman system service` started here on a
  socket in a temporary directory, with the settings of `images/containers.conf`, and stopped
  after the run (its log: `<output-dir>/podman.log`).
- Each task runs in the image its component names (the reference compiled into the IR, which
  `make images` builds and tags locally; a missing one is refused before anything runs), on the
  host network, so the local stack's S3 and MLflow on loopback are reachable from it.
- The run's settings reach the container as environment at run time, never through the image:
  the tracking URI and parent run, the S3 endpoint, and the S3 credentials read from the stack's
  credentials file (the file itself is not mounted).
- kfp.local mounts the pipeline root at the same path; the output dir is mounted the same way
  (stage mirrors, the SQLite MLflow store). Containers run as their image's user (uid 10001, as on
  a cluster), so for the run the output dir belongs to that uid, and afterwards to the invoking
  user again. That needs root (podman as root: this machine, CI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# The same settings as images/containers.conf (tests/test_containers.py checks they agree).
CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
runtime = "runc"
"""
PASSED_PREFIXES = ("R1VFLOW_", "MLFLOW_", "AWS_")
CREDENTIALS_FILE_ENV = "R1VFLOW_S3_CREDENTIALS_FILE"


class ContainerError(RuntimeError):
    """The containerized run cannot start; the message says what to do."""


def container_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a task container gets: r1vflow's, MLflow's and AWS's variables of
    `environ`, with the S3 credentials file replaced by the keys it holds (the file lives on the
    host; credentials travel as environment, never in an image)."""
    from r1vflow.storage.settings import load_credentials

    env = {k: v for k, v in environ.items() if k.startswith(PASSED_PREFIXES)}
    credentials_file = env.pop(CREDENTIALS_FILE_ENV, None)
    if credentials_file:
        access_key, secret_key = load_credentials(Path(credentials_file), {})
        env["R1VFLOW_S3_ACCESS_KEY"], env["R1VFLOW_S3_SECRET_KEY"] = access_key, secret_key
    return env


def task_images(pipeline_spec: Mapping[str, Any]) -> dict[str, str]:
    """Task name -> the image its executor runs in, for every container task of a compiled
    pipeline (a PipelineSpec as a dict; tasks inside conditions included)."""
    components = pipeline_spec.get("components", {})
    executors = pipeline_spec.get("deploymentSpec", {}).get("executors", {})
    dags = [pipeline_spec["root"]["dag"]]
    dags += [c["dag"] for c in components.values() if "dag" in c]
    images: dict[str, str] = {}
    for dag in dags:
        for name, task in dag.get("tasks", {}).items():
            component = components.get(task["componentRef"]["name"], {})
            executor = executors.get(component.get("executorLabel", ""), {})
            if "container" in executor:
                images[task.get("taskInfo", {}).get("name", name)] = executor["container"]["image"]
    return images


def image_user(attrs: Mapping[str, Any]) -> tuple[int, int]:
    """(uid, gid) an image runs as, from `docker inspect` attributes; ContainerError unless it
    is numeric and not root (as tests/test_images.py requires of every Dockerfile)."""
    user = (attrs.get("Config") or {}).get("User") or "0"
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or not (gid or uid).isdigit() or int(uid) == 0:
        raise ContainerError(f"image {attrs.get('RepoTags')} runs as user {user!r}; r1vflow's "
                             "images run as a numeric non-root uid (rebuild: make images)")
    return int(uid), int(gid or uid)


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give `root` and everything under it to uid:gid (symbolic links themselves)."""
    os.chown(root, uid, gid, follow_symlinks=False)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


def _ping(docker_host: str) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=docker_host, timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except docker.errors.DockerException:
        return False


@contextlib.contextmanager
def podman_service(log_path: Path, timeout: float = 60.0) -> Iterator[str]:
    """A Docker API address: $DOCKER_HOST when set, else a `podman system service` started for
    the duration of the block (settings CONTAINERS_CONF unless $CONTAINERS_CONF names others)."""
    if os.environ.get("DOCKER_HOST"):
        yield os.environ["DOCKER_HOST"]
        return
    podman = shutil.which("podman")
    if podman is None:
        raise ContainerError("--runner docker needs a Docker API: set DOCKER_HOST to its socket, "
                             "or install podman (as root: apt-get install podman runc)")
    with tempfile.TemporaryDirectory(prefix="r1vflow-podman-") as tmp:
        conf = Path(tmp) / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        address = f"unix://{tmp}/podman.sock"
        env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(conf))}
        with log_path.open("w") as log:
            proc = subprocess.Popen([podman, "system", "service", "--time=0", address], env=env,
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not _ping(address):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ContainerError(f"podman system service did not answer on {address} "
                                         f"(log: {log_path})")
                time.sleep(0.2)
            yield address
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_container(client: Any, image: str, command: list[str], volumes: dict[str, Any],
                  **container_run_args: Any) -> int:
    """Run one task's container, stream its output, return its exit status.

    Replaces kfp.local's `run_docker_container`, which starts the container with auto_remove and
    counts a container already gone when it asks for the status as a success: podman removes an
    exited container at once, so a failed task passed for a succeeded one. Here the container is
    removed only after its status is read. Images are checked before the run, never pulled."""
    print(f"r1vflow: running in image {image!r}\n")
    container = client.containers.run(image=image, command=command, detach=True, stdout=True,
                                      stderr=True, volumes=volumes, **container_run_args)
    try:
        for chunk in container.logs(stream=True, follow=True):
            print(chunk.decode(errors="replace"), end="")
        status = int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)
    if status != 0:
        print(f"r1vflow: the container of image {image!r} exited with status {status}")
    return status


@contextlib.contextmanager
def _patched_kfp_docker() -> Iterator[None]:
    """kfp.local's DockerRunner runs containers with `run_container` inside the block."""
    from kfp.local import docker_task_handler

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_container
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original


def _local_images(client: Any, images: set[str]) -> dict[str, tuple[int, int]]:
    """The user of each image; ContainerError naming those not built here."""
    import docker

    users, missing = {}, []
    for image in sorted(images):
        try:
            users[image] = image_user(client.images.get(image).attrs)
        except docker.errors.ImageNotFound:
            missing.append(image)
    if missing:
        raise ContainerError(f"image(s) {', '.join(missing)} not found by {client.api.base_url}: "
                             "build them with `make images` (images/build.sh --local)")
    return users


@contextlib.contextmanager
def docker_runner(output_dir: Path, images: set[str],
                  environ: Mapping[str, str]) -> Iterator[Any]:
    """A kfp.local DockerRunner for the run into `output_dir`, its API served and its images
    checked for the duration of the block; the output dir belongs to the images' user meanwhile."""
    import docker
    from docker.types import Mount
    from kfp import local

    if os.geteuid() != 0:
        raise ContainerError("--runner docker runs as root here: it hands the output dir to the "
                             "images' non-root user (uid 10001) for the run and back afterwards")
    env = container_env(environ)  # before anything starts: a bad credentials file stops here
    with podman_service(output_dir / "podman.log") as address:
        if not _ping(address):
            raise ContainerError(f"no Docker API answers at DOCKER_HOST={address}: start it "
                                 "(podman system service) or unset DOCKER_HOST")
        client = docker.DockerClient(base_url=address)
        users = set(_local_images(client, images).values())
        client.close()
        if len(users) != 1:
            raise ContainerError(f"the images run as different users {sorted(users)}; the "
                                 "output dir can belong to one only")
        ((uid, gid),) = users
        saved = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = address  # kfp.local's docker.from_env() reads it
        out = str(output_dir)
        chown_tree(output_dir, uid, gid)
        try:
            with _patched_kfp_docker():
                yield local.DockerRunner(network_mode="host", environment=env,
                                         mounts=[Mount(target=out, source=out, type="bind")])
        finally:
            chown_tree(output_dir, os.getuid(), os.getgid())
            if saved is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = saved
