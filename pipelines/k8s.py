"""Per-task Kubernetes settings: the experiment's `resources` and `cluster` sections -> KFP IR.

Every stage task gets
- cpu/memory requests and limits, accelerator type and count, node selector, tolerations;
- KFP caching, retries with exponential backoff, and a pod deadline (`timeout_seconds`);
- an optional generic ephemeral volume (a PVC that lives and dies with the pod) at /scratch;
- S3 credentials (and MLflow's, when configured) as env vars from Secrets -- references only,
  never a value -- and the non-secret settings from the settings ConfigMap;
- pod labels r1vflow.io/{experiment,stage,fingerprint} and three downward-API env vars (pod
  namespace, KFP run id, Argo workflow) through which the task finds its MLflow parent run;
- image overrides and image pull secrets from `cluster`.

A stage with `nodes > 1` runs as a Kubeflow Trainer TrainJob (r1vflow.runtime.launch): its KFP task only
launches and watches it, so it gets the small launcher resources and no accelerator; the stage's
resources go to the TrainJob's nodes. None of this changes the task's cache key except the
container's resources and image, which are fixed per compiled pipeline.

The local runner (kfp.local) ignores the Kubernetes platform settings.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from kfp import dsl, kubernetes
from kfp.dsl import pipeline_task

from r1vflow.config import ClusterConfig, Experiment, ResourceSpec
from r1vflow.runtime.cluster import (
    FIELD_PATH_ENV,
    MLFLOW_SECRET_KEYS,
    S3_SECRET_KEYS,
    SETTINGS_KEYS,
)
from r1vflow.runtime.images import IMAGE_ROLES, image_for
from r1vflow.runtime.podspec import accelerator_resource, container_resources, pod_labels
from r1vflow.storage.scratch import SCRATCH_MOUNT


class _CallerNames:
    """What kfp.dsl.pipeline_task reads of `inspect` inside `kfp_caller_names()`."""

    @staticmethod
    def stack(context: int = 1) -> list[tuple]:
        """inspect.stack()'s (frame, filename, lineno, function, code_context, index) of each
        frame from the caller out, without the source lines (code_context and index None)."""
        frames, frame = [], sys._getframe(1)
        while frame is not None:
            code = frame.f_code
            frames.append((frame, code.co_filename, frame.f_lineno, code.co_name, None, None))
            frame = frame.f_back
        return frames


@contextlib.contextmanager
def kfp_caller_names() -> Iterator[None]:
    """KFP's task setters (set_cpu_limit, add_node_selector_constraint, set_env_variable, ...)
    each call inspect.stack() to name themselves in an error message they raise only for a
    task without a container. inspect.stack() reads every frame's source and module, and for
    a frame whose file is no module's (code run from a string, a notebook cell, pytest-xdist's
    worker loop) inspect.getmodule walks all of sys.modules, every time. In a process that
    imported torch, transformers and vLLM (about 9,400 modules), compiling the 38B presets
    took 3.5-5.5 s each instead of 0.1-0.3 s (test_compile.py: 76 s in the suite, 8 s alone).
    Inside this block pipeline_task's `inspect.stack` gives each frame's function name and
    place with no source; that name is all KFP reads of it."""
    saved = pipeline_task.inspect
    pipeline_task.inspect = _CallerNames
    try:
        yield
    finally:
        pipeline_task.inspect = saved


def apply_task_settings(task: dsl.PipelineTask, stage: str, exp: Experiment) -> None:
    """Apply everything Kubernetes-specific for `stage` to its KFP task (see module doc)."""
    spec = exp.resources.get(stage) or ResourceSpec()
    cluster = exp.cluster
    if spec.nodes > 1:
        task.set_cpu_request(cluster.launcher_cpu).set_cpu_limit(cluster.launcher_cpu)
        task.set_memory_request(cluster.launcher_memory).set_memory_limit(cluster.launcher_memory)
    else:
        apply_resources(task, spec)
    apply_execution_policy(task, spec)
    apply_scratch(task, spec.scratch_size, spec.scratch_storage_class)
    apply_environment(task, cluster)
    if cluster.hf_secret and stage in hub_stages(exp):  # only the tasks that download
        kubernetes.use_secret_as_env(task, secret_name=cluster.hf_secret,
                                     secret_key_to_env={"token": "HF_TOKEN"})
    labels = pod_labels(exp.name, stage, exp.fingerprint())
    for key, value in labels.items():
        kubernetes.add_pod_label(task, label_key=key, label_value=value)
    apply_image(task, cluster)


def hub_stages(exp: Experiment) -> set[str]:
    """The stages that download from the hub: import_model, and evaluate when a benchmark
    is a hub:<owner>/<name> data set."""
    hub = any(b.path.startswith("hub:") for b in exp.evaluate.benchmarks)
    return {"import_model", *(("evaluate",) if hub else ())}


def apply_resources(task: dsl.PipelineTask, spec: ResourceSpec) -> None:
    """Requests, limits (default: the requests), accelerator, node selector, tolerations
    (r1vflow.runtime.podspec, as for a TrainJob's nodes)."""
    requests, limits = container_resources(spec)
    if "cpu" in requests:
        task.set_cpu_request(requests["cpu"])
        task.set_cpu_limit(limits["cpu"])
    if "memory" in requests:
        task.set_memory_request(requests["memory"])
        task.set_memory_limit(limits["memory"])
    accelerator = accelerator_resource(spec)
    if accelerator is not None:
        task.set_accelerator_type(accelerator)
        task.set_accelerator_limit(spec.accelerator_count)
    for key, value in spec.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in spec.tolerations:
        kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value,
                                  effect=tol.effect)


def apply_execution_policy(task: dsl.PipelineTask, spec: ResourceSpec) -> None:
    """Caching, retries with exponential backoff, and the pod's activeDeadlineSeconds."""
    task.set_caching_options(enable_caching=spec.caching)
    if spec.retries:
        task.set_retry(num_retries=spec.retries,
                       backoff_duration=f"{spec.retry_backoff_seconds}s",
                       backoff_factor=spec.retry_backoff_factor,
                       backoff_max_duration=f"{spec.retry_backoff_max_seconds}s")
    if spec.timeout_seconds:
        kubernetes.set_timeout(task, seconds=spec.timeout_seconds)


def apply_scratch(task: dsl.PipelineTask, size: str | None, storage_class: str | None) -> None:
    """A generic ephemeral volume of `size` at /scratch (r1vflow.storage.scratch.scratch_dir finds it).

    Not announced through an env var: kfp.local would pass that to local runs too."""
    if not size:
        return
    kubernetes.add_ephemeral_volume(task, volume_name="scratch", mount_path=SCRATCH_MOUNT,
                                    access_modes=["ReadWriteOnce"], size=size,
                                    storage_class_name=storage_class)


def apply_environment(task: dsl.PipelineTask, cluster: ClusterConfig) -> None:
    """Credentials as Secret references, settings from the ConfigMap, downward-API fields."""
    kubernetes.use_secret_as_env(task, secret_name=cluster.s3_secret,
                                 secret_key_to_env=dict(S3_SECRET_KEYS))
    if cluster.mlflow_secret:
        kubernetes.use_secret_as_env(task, secret_name=cluster.mlflow_secret,
                                     secret_key_to_env=dict(MLFLOW_SECRET_KEYS))
    kubernetes.use_config_map_as_env(task, config_map_name=cluster.settings_configmap,
                                     config_map_key_to_env={k: k for k in SETTINGS_KEYS})
    for env_name, field_path in FIELD_PATH_ENV.items():
        kubernetes.use_field_path_as_env(task, env_name=env_name, field_path=field_path)


def apply_image(task: dsl.PipelineTask, cluster: ClusterConfig) -> None:
    """Replace the component's pinned image by `cluster.images[role]`; add pull secrets."""
    roles = {image_for(role): role for role in IMAGE_ROLES}
    role = roles.get(task.container_spec.image) if task.container_spec else None
    if role and role in cluster.images:
        task.set_container_image(cluster.images[role])
    if cluster.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(cluster.image_pull_secrets))
