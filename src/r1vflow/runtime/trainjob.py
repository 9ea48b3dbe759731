"""Multi-node stages as Kubeflow Trainer v2 TrainJobs (trainer.kubeflow.org/v1alpha1, v2.3.0).

A stage with `nodes > 1` on a cluster: its KFP task uploads the inputs to the object store,
creates a TrainJob on the ClusterTrainingRuntime `r1vflow-deepspeed` (manifests/base/cluster)
whose `node` containers run `torchrun -m r1vflow.runtime.launch worker` (torchrun reads the PET_* variables
the Trainer's torch plugin injects), streams the logs of the node pods, and fails with the job's
reason if it fails. Rank 0 uploads the outputs and its result; the task downloads them into its
KFP output artifacts.

    manifest = build_trainjob(name=..., namespace="r1vflow", runtime="r1vflow-deepspeed", ...)
    run_trainjob(manifest, custom_api, core_api, timeout_s=None)

`build_trainjob` is pure and checked against manifests/schemas/trainjob.json in tests.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from r1vflow.config import Experiment, ResourceSpec
from r1vflow.runtime.cluster import LABEL_PREFIX, MLFLOW_SECRET_KEYS, S3_SECRET_KEYS, label_value
from r1vflow.runtime.images import image_for
from r1vflow.runtime.podspec import container_resources, pod_labels
from r1vflow.runtime.worker import RESULT_FILE, WorkerResult, WorkerSpec, staging_prefix

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
NODE = "node"  # the trainer's replicated job and container in the runtime
PATCH_MANAGER = "r1vflow.io/launcher"
DEFAULT_NAMESPACE, DEFAULT_RUNTIME = "r1vflow", "r1vflow-deepspeed"
POD_SELECTOR = "jobset.sigs.k8s.io/jobset-name={name}"  # the JobSet is named after the TrainJob
Sink = Callable[[str], None]


class TrainJobFailed(RuntimeError):
    """The TrainJob failed, timed out or could not be created; the message says which and why."""


def trainjob_name(exp_name: str, stage: str, token: str) -> str:
    """RFC 1035 name <= 40 chars (pod hostnames `<name>-node-0-0` must stay DNS labels)."""
    stem = re.sub(r"[^a-z0-9-]", "-", f"{exp_name}-{stage}".lower()).strip("-")[:30].strip("-")
    if not stem or not stem[0].isalpha():
        stem = f"r-{stem}".rstrip("-")
    return f"{stem}-{token[:8]}"


def secret_env(secret: str, key_to_env: Mapping[str, str]) -> list[dict[str, Any]]:
    """EnvVars that reference Secret keys (never values)."""
    return [{"name": env, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
            for key, env in key_to_env.items()]


def build_trainjob(*, name: str, namespace: str, runtime: str, image: str, nodes: int,
                   procs_per_node: int, command: list[str], env: list[dict[str, Any]],
                   requests: dict[str, str], limits: dict[str, str],
                   node_selector: Mapping[str, str], tolerations: list[dict[str, Any]],
                   labels: Mapping[str, str],
                   active_deadline_seconds: int | None = None) -> dict[str, Any]:
    """The TrainJob manifest (a plain dict, ready for the CustomObjectsApi).

    Placement (node selector, tolerations) and pod labels go through `runtimePatches` onto the
    runtime's `node` pods; resources through `trainer.resourcesPerNode`."""
    pod_spec: dict[str, Any] = {}
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = list(tolerations)
    pod_template: dict[str, Any] = {"metadata": {"labels": dict(labels)}}
    if pod_spec:
        pod_template["spec"] = pod_spec
    trainer: dict[str, Any] = {"image": image, "command": list(command), "numNodes": nodes,
                               "numProcPerNode": procs_per_node, "env": list(env)}
    if requests or limits:
        trainer["resourcesPerNode"] = {k: v for k, v in
                                       (("requests", requests), ("limits", limits)) if v}
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": runtime},
        "trainer": trainer,
        "runtimePatches": [{
            "manager": PATCH_MANAGER,
            "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
                {"name": NODE, "template": {"spec": {"template": pod_template}}}]}}},
        }],
    }
    if active_deadline_seconds:
        spec["activeDeadlineSeconds"] = active_deadline_seconds
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": spec}


def trainjob_for_stage(worker_json: str, exp: Experiment, stage: str, spec: ResourceSpec,
                       token: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The TrainJob that runs `stage` of `exp` per `spec`, every node executing `worker_json`."""
    env = os.environ if environ is None else environ
    cluster = exp.cluster
    secrets = secret_env(cluster.s3_secret, S3_SECRET_KEYS)
    if cluster.mlflow_secret:
        secrets += secret_env(cluster.mlflow_secret, MLFLOW_SECRET_KEYS)
    requests, limits = container_resources(spec)  # of each node, as for a KFP task's pod
    labels = pod_labels(exp.name, stage, exp.fingerprint())
    if env.get("R1VFLOW_KFP_RUN_ID"):
        labels[f"{LABEL_PREFIX}kfp-run-id"] = label_value(env["R1VFLOW_KFP_RUN_ID"])
    return build_trainjob(
        name=trainjob_name(exp.name, stage, token),
        namespace=(cluster.trainjob_namespace or env.get("R1VFLOW_TRAINJOB_NAMESPACE")
                   or DEFAULT_NAMESPACE),
        runtime=(cluster.training_runtime or env.get("R1VFLOW_TRAINING_RUNTIME")
                 or DEFAULT_RUNTIME),
        image=cluster.images.get("trainer") or image_for("trainer"),
        nodes=spec.nodes, procs_per_node=spec.procs_per_node,
        command=["torchrun", "-m", "r1vflow.runtime.launch", "worker", "--spec", worker_json],
        env=secrets, requests=requests, limits=limits, node_selector=spec.node_selector,
        tolerations=[t.model_dump(exclude_none=True) for t in spec.tolerations],
        labels=labels, active_deadline_seconds=spec.timeout_seconds)


# --------------------------------------------------------------------------- watching


def trainjob_state(obj: Mapping[str, Any]) -> tuple[str, str]:
    """('running' | 'succeeded' | 'failed', detail) from a TrainJob's status conditions."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        detail = ": ".join(x for x in (cond.get("reason"), cond.get("message")) if x)
        if cond.get("type") == "Complete":
            return "succeeded", detail
        if cond.get("type") == "Failed":
            return "failed", detail or "Failed"
    return "running", ""


def failed_pods(pods: list[Any]) -> list[str]:
    """'pod: reason (exit N)' for every node container that terminated unsuccessfully."""
    out = []
    for pod in pods:
        for status in (pod.status.container_statuses or []) if pod.status else []:
            term = status.state.terminated if status.state else None
            if status.name == NODE and term is not None and term.exit_code:
                out.append(f"{pod.metadata.name}: {term.reason or 'Error'} (exit {term.exit_code})")
    return out


class _LogFollower(threading.Thread):
    """Streams one pod's `node` container log to `sink`, each line prefixed by the pod name."""

    def __init__(self, core_api: Any, pod: str, namespace: str, sink: Sink):
        super().__init__(daemon=True, name=f"log-{pod}")
        self.core_api, self.pod, self.namespace, self.sink = core_api, pod, namespace, sink

    def run(self) -> None:
        try:
            resp = self.core_api.read_namespaced_pod_log(
                self.pod, self.namespace, container=NODE, follow=True, _preload_content=False)
            pending = b""
            for chunk in resp.stream(4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.sink(f"[{self.pod}] {line.decode(errors='replace')}")
            if pending:
                self.sink(f"[{self.pod}] {pending.decode(errors='replace')}")
        except Exception as err:  # noqa: BLE001 (logs are best effort; the job state decides)
            self.sink(f"[{self.pod}] (log stream ended: {err})")


def run_trainjob(manifest: dict[str, Any], custom_api: Any, core_api: Any,
                 timeout_s: float | None = None, poll_s: float = 10.0,
                 sink: Sink = print, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
    """Create the TrainJob, stream its node pods' logs until it ends, delete it on success.

    Raises TrainJobFailed with the job's reason (and each failed pod's exit) when it fails,
    or when it is still running after `timeout_s`; an interrupted or timed-out job is deleted,
    a failed one is kept for `kubectl describe`."""
    name, ns = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        custom_api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest)
    except Exception as err:
        raise TrainJobFailed(f"could not create TrainJob {ns}/{name}: {_api_reason(err)}") from None
    sink(f"created TrainJob {ns}/{name} ({manifest['spec']['trainer']['numNodes']} nodes)")
    followers: dict[str, _LogFollower] = {}
    started, state = clock(), "running"
    try:
        while True:
            obj = custom_api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            state, detail = trainjob_state(obj)
            pods = core_api.list_namespaced_pod(
                ns, label_selector=POD_SELECTOR.format(name=name)).items
            for pod in pods:
                phase = pod.status.phase if pod.status else None
                if pod.metadata.name not in followers and phase in ("Running", "Succeeded",
                                                                    "Failed"):
                    followers[pod.metadata.name] = _LogFollower(core_api, pod.metadata.name,
                                                                ns, sink)
                    followers[pod.metadata.name].start()
            if state != "running":
                for follower in followers.values():
                    follower.join(timeout=30)
                if state == "failed":
                    pods_msg = "; ".join(failed_pods(pods))
                    raise TrainJobFailed(f"TrainJob {ns}/{name} failed: {detail}"
                                         + (f" [{pods_msg}]" if pods_msg else ""))
                sink(f"TrainJob {ns}/{name} succeeded")
                _delete(custom_api, ns, name)
                return
            if timeout_s is not None and clock() - started > timeout_s:
                raise TrainJobFailed(f"TrainJob {ns}/{name} still running after {timeout_s:.0f} s")
            sleep(poll_s)
    except BaseException:
        if state == "running":  # interrupted, timed out, or the API failed: do not leak it
            _delete(custom_api, ns, name)
        raise


def _delete(custom_api: Any, ns: str, name: str) -> None:
    try:
        custom_api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name,
                                                   propagation_policy="Foreground")
    except Exception as err:  # noqa: BLE001 (cleanup: report, do not mask the real outcome)
        print(f"warning: could not delete TrainJob {ns}/{name}: {_api_reason(err)}",
              file=sys.stderr)


def _api_reason(err: Exception) -> str:
    reason = getattr(err, "reason", None)
    status = getattr(err, "status", None)
    return f"{status} {reason}" if status else f"{type(err).__name__}: {err}"


def kubernetes_apis() -> tuple[Any, Any]:
    """(CustomObjectsApi, CoreV1Api) from the pod's service account, else ~/.kube/config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi(), client.CoreV1Api()


# --------------------------------------------------------------------------- the component side


def launch_trainjob(worker: WorkerSpec, exp: Experiment, spec: ResourceSpec,
                    inputs: Mapping[str, Path], outputs: Mapping[str, Path]) -> WorkerResult:
    """Stage inputs in the object store, run the TrainJob, fetch outputs; rank 0's result."""
    from r1vflow.storage import store_from_env

    store = store_from_env()
    if store is None:
        raise TrainJobFailed("a multi-node stage needs the object store to move its inputs and "
                             "outputs: R1VFLOW_S3_ENDPOINT is not set (settings ConfigMap)")
    prefix = staging_prefix(exp.name, worker.stage)
    uris = {k: store.upload_dir(Path(v), f"{prefix}/inputs/{k}").pointer.uri
            for k, v in inputs.items()}
    staged = worker.model_copy(update={"inputs": uris, "staging": prefix,
                                       "outputs": {k: "" for k in outputs}})
    manifest = trainjob_for_stage(staged.model_dump_json(), exp, worker.stage, spec,
                                  uuid.uuid4().hex)
    custom_api, core_api = kubernetes_apis()
    previous = signal.signal(signal.SIGTERM, _raise_exit)  # KFP cancels by deleting the pod
    try:
        run_trainjob(manifest, custom_api, core_api, timeout_s=spec.timeout_seconds)
    finally:
        signal.signal(signal.SIGTERM, previous)
    for key, path in outputs.items():
        store.download_dir(store.uri_for(f"{prefix}/outputs/{key}"), Path(path))
    with tempfile.TemporaryDirectory(prefix="r1vflow-result-") as tmp:
        store.download_dir(store.uri_for(f"{prefix}/result"), Path(tmp))
        result = WorkerResult.model_validate_json((Path(tmp) / RESULT_FILE).read_text())
    store.delete(store.uri_for(prefix))  # inputs, outputs and result copies of this launch
    return result


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
