"""What a stage's pods carry, read once for both kinds of pod: a KFP task's (pipelines/k8s.py)
and a TrainJob node's (r1vflow.runtime.trainjob).

- `pod_labels`: r1vflow.io/{experiment,stage,fingerprint};
- `accelerator_resource`: the extended resource that `resources.<stage>.accelerator_type` counts;
- `container_resources`: requests and limits (a limit defaults to its request and vice versa).
"""

from __future__ import annotations

from r1vflow.config import ResourceSpec
from r1vflow.runtime.cluster import LABEL_PREFIX, label_value

FINGERPRINT_LABEL_CHARS = 16
GPU_RESOURCE = "nvidia.com/gpu"


def pod_labels(exp_name: str, stage: str, fingerprint: str) -> dict[str, str]:
    """r1vflow.io/{experiment,stage,fingerprint} (fingerprint: its first 16 hex digits)."""
    return {
        f"{LABEL_PREFIX}experiment": label_value(exp_name),
        f"{LABEL_PREFIX}stage": label_value(stage.replace("_", "-")),
        f"{LABEL_PREFIX}fingerprint": fingerprint[:FINGERPRINT_LABEL_CHARS],
    }


def accelerator_resource(spec: ResourceSpec) -> str | None:
    """The resource name a pod requests `spec.accelerator_count` of, None without accelerators.

    An accelerator type with a '/' is that resource (nvidia.com/gpu, amd.com/gpu, ...); one
    without (a GKE accelerator name such as nvidia-h100-80gb) is a node label, not a resource,
    so the resource counted is nvidia.com/gpu (place the pod with a node_selector on
    cloud.google.com/gke-accelerator)."""
    if not spec.accelerator_type:
        return None
    return spec.accelerator_type if "/" in spec.accelerator_type else GPU_RESOURCE


def container_resources(spec: ResourceSpec) -> tuple[dict[str, str], dict[str, str]]:
    """(requests, limits) of a stage's container: cpu and memory (each limit defaults to its
    request and each request to its limit) and the accelerator (request = limit = count)."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    for key, request, limit in (("cpu", spec.cpu, spec.cpu_limit),
                                ("memory", spec.memory, spec.memory_limit)):
        if request or limit:
            requests[key], limits[key] = request or limit, limit or request
    gpu = accelerator_resource(spec)
    if gpu is not None:
        requests[gpu] = limits[gpu] = str(spec.accelerator_count)
    return requests, limits
