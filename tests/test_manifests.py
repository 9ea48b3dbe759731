"""Offline checks of manifests/: every kustomize overlay renders and validates.

Each overlay is rendered with `kubectl kustomize`; every document is validated against the
Kubernetes OpenAPI schemas shipped with kubernetes-validate (strict: unknown fields fail), and
custom resources against the schemas vendored in manifests/schemas/ (see docs/cluster.md).
On top of the schemas: pod security, resources, Secret hygiene, pinned images, GPU placement.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
SCHEMAS = MANIFESTS / "schemas"
VERSIONS_ENV = REPO / "images" / "versions.env"
OVERLAYS = ("local-kind", "gke", "eks")
GPU_OVERLAYS = {
    "gke": ("cloud.google.com/gke-accelerator", "nvidia-h100-80gb"),
    "eks": ("node.kubernetes.io/instance-type", "p5.48xlarge"),
}
# The kubectl client here (1.32) and kubernetes-validate's newest schemas (its default).
K8S_VERSIONS = ("1.32.0", latest_version())
CRD_SCHEMAS = {  # (apiVersion, kind) -> vendored JSON schema
    (
        "trainer.kubeflow.org/v1alpha1",
        "ClusterTrainingRuntime",
    ): "clustertrainingruntime-trainer.kubeflow.org-v1alpha1.json",
}
CREDENTIAL_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|CREDENTIAL", re.IGNORECASE)
KUBECTL = shutil.which("kubectl")

pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed, so kustomize overlays cannot be rendered"
)


@functools.cache
def render(path: str) -> tuple[dict, ...]:
    """All documents of `kubectl kustomize manifests/<path>`."""
    proc = subprocess.run(
        [KUBECTL, "kustomize", str(MANIFESTS / path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"kubectl kustomize manifests/{path} failed:\n{proc.stderr}"
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def name_of(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


@functools.cache
def crd_validator(schema_file: str) -> jsonschema.Draft202012Validator:
    """Validator for a vendored CRD schema; its $refs into the Kubernetes definitions resolve
    to kubernetes-validate's strict definitions of the newest version."""
    import importlib.resources

    defs_file = (
        importlib.resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / f"v{latest_version()}-local-strict"
        / "_definitions.json"
    )
    defs = json.loads(defs_file.read_text())
    schema = json.loads((SCHEMAS / schema_file).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    registry = Registry().with_resources(
        [
            (defs["$id"], Resource.from_contents(defs)),
            (schema["$id"], Resource.from_contents(schema)),
        ]
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(doc: dict, k8s_version: str) -> list[str]:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        validator = crd_validator(CRD_SCHEMAS[key])
        return [
            f"{name_of(doc)}: {'.'.join(map(str, e.path))}: {e.message[:300]}"
            for e in validator.iter_errors(doc)
        ]
    try:
        kubernetes_validate.validate(doc, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{name_of(doc)}: {'.'.join(map(str, e.path))}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [
            f"{name_of(doc)}: {e.message}; vendor a schema into manifests/schemas/ and "
            f"list it in CRD_SCHEMAS"
        ]
    return []


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(label, pod spec) for every pod template inside a rendered document."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return [(name_of(doc), spec["template"]["spec"])]
    if kind == "CronJob":
        return [(name_of(doc), spec["jobTemplate"]["spec"]["template"]["spec"])]
    if kind in ("ClusterTrainingRuntime", "TrainingRuntime"):
        return [
            (f"{name_of(doc)}[{rj['name']}]", rj["template"]["spec"]["template"]["spec"])
            for rj in spec["template"]["spec"]["replicatedJobs"]
        ]
    assert "template" not in spec, f"{name_of(doc)}: pod template of unknown kind not checked"
    return []


def containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def all_pods(docs) -> list[tuple[str, dict]]:
    return [item for doc in docs for item in pod_specs(doc)]


def versions_env() -> dict[str, str]:
    pairs = {}
    for line in VERSIONS_ENV.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_every_document_validates(overlay: str, k8s_version: str) -> None:
    docs = render(f"overlays/{overlay}")
    assert len(docs) >= 10, f"overlay {overlay} rendered only {len(docs)} documents"
    errors = [err for doc in docs for err in schema_errors(doc, k8s_version)]
    assert not errors, f"overlay {overlay} (Kubernetes {k8s_version}):\n" + "\n".join(errors)


def test_base_renders_and_validates() -> None:
    errors = [err for doc in render("base") for err in schema_errors(doc, latest_version())]
    assert not errors, "\n".join(errors)


def test_runtime_schema_rejects_broken_runtimes() -> None:
    """The vendored schema is not vacuous: typical mistakes fail it."""
    runtime = next(d for d in render("overlays/gke") if d["kind"] == "ClusterTrainingRuntime")
    validator = crd_validator(CRD_SCHEMAS[(runtime["apiVersion"], runtime["kind"])])
    assert not list(validator.iter_errors(runtime))

    def broken(edit) -> list[str]:
        doc = copy.deepcopy(runtime)
        edit(doc)
        return [e.message for e in validator.iter_errors(doc)]

    def job(doc: dict) -> dict:
        return doc["spec"]["template"]["spec"]["replicatedJobs"][0]

    def pod(doc: dict) -> dict:
        return job(doc)["template"]["spec"]["template"]["spec"]

    assert broken(lambda d: d["spec"]["mlPolicy"].update(mpi={}))  # two ML policies
    assert broken(lambda d: d["spec"]["mlPolicy"].update(numNodes="2"))
    assert broken(lambda d: job(d).pop("name"))
    assert broken(lambda d: job(d)["template"]["spec"].pop("template"))
    assert broken(lambda d: pod(d)["containers"][0].update(imagePullPolice="Always"))
    assert broken(lambda d: d["spec"]["template"]["spec"].update(replicatedJob=[]))
    assert broken(lambda d: d["metadata"].update(namespace="r1vflow"))


# --------------------------------------------------------------------------- pod hygiene


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down(overlay: str) -> None:
    problems = []
    for label, pod in all_pods(render(f"overlays/{overlay}")):
        pod_sc = pod.get("securityContext", {})
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{label}: automountServiceAccountToken is not false")
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{label}: pod seccompProfile is not RuntimeDefault")
        for c in containers(pod):
            where = f"{label} container {c['name']}"
            sc = {**pod_sc, **c.get("securityContext", {})}
            if sc.get("runAsNonRoot") is not True or sc.get("runAsUser", 1) == 0:
                problems.append(f"{where}: not runAsNonRoot with a non-zero runAsUser")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities do not drop ALL")
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(resources.get(kind, {}))
                if missing:
                    problems.append(f"{where}: resources.{kind} lacks {sorted(missing)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_in_versions_env(overlay: str) -> None:
    pinned = set(versions_env().values())
    for label, pod in all_pods(render(f"overlays/{overlay}")):
        for c in containers(pod):
            image = c["image"]
            last = image.rsplit("/", 1)[-1]
            assert "@sha256:" in image or (":" in last and not last.endswith(":latest")), (
                f"{label} container {c['name']}: image {image!r} is not pinned by tag or digest"
            )
            assert image in pinned, (
                f"{label} container {c['name']}: image {image!r} is not one of the references "
                f"pinned in images/versions.env"
            )


def test_namespace_enforces_restricted_pod_security() -> None:
    ns = next(d for d in render("base") if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --------------------------------------------------------------------------- credentials


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_templates_without_values(overlay: str) -> None:
    secrets = [d for d in render(f"overlays/{overlay}") if d["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} >= {
        "r1vflow-s3-credentials",
        "r1vflow-mlflow-db",
    }
    for s in secrets:
        for field in ("data", "stringData"):
            assert not s.get(field), f"{name_of(s)} carries values in {field}: never commit them"
        assert s["metadata"].get("annotations", {}).get("r1vflow.io/required-keys"), (
            f"{name_of(s)}: annotate the keys it must hold (r1vflow.io/required-keys)"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve_to_rendered_secrets_and_configmaps(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    secret_keys = {
        d["metadata"]["name"]: set(
            d["metadata"]["annotations"]["r1vflow.io/required-keys"].split(",")
        )
        for d in docs
        if d["kind"] == "Secret"
    }
    config_keys = {
        d["metadata"]["name"]: set(d.get("data", {})) for d in docs if d["kind"] == "ConfigMap"
    }
    problems = []
    for label, pod in all_pods(docs):
        for c in containers(pod):
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef") or src.get("secretRef")
                known = config_keys if "configMapRef" in src else secret_keys
                if ref["name"] not in known:
                    problems.append(f"{label}/{c['name']}: envFrom {ref['name']} not rendered")
            for env in c.get("env", []):
                source = env.get("valueFrom", {})
                for ref_kind, known in (
                    ("secretKeyRef", secret_keys),
                    ("configMapKeyRef", config_keys),
                ):
                    ref = source.get(ref_kind)
                    if ref and ref["key"] not in known.get(ref["name"], set()):
                        problems.append(
                            f"{label}/{c['name']}: env {env['name']} refers to "
                            f"{ref['name']}/{ref['key']}, which is not declared"
                        )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials_only_come_from_secrets(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            leaked = [k for k in doc.get("data", {}) if CREDENTIAL_NAME.search(k)]
            assert not leaked, f"{name_of(doc)} holds credential-like keys {leaked}"
    for label, pod in all_pods(docs):
        for c in containers(pod):
            for env in c.get("env", []):
                if CREDENTIAL_NAME.search(env["name"]):
                    assert "secretKeyRef" in env.get("valueFrom", {}), (
                        f"{label}/{c['name']}: env {env['name']} must come from a secretKeyRef"
                    )


# --------------------------------------------------------------------------- placement, scope


def runtime_pod(docs) -> dict:
    runtime = next(d for d in docs if d["kind"] == "ClusterTrainingRuntime")
    assert runtime["metadata"]["name"] == "r1vflow-deepspeed"
    (rj,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert (
        rj["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"]
        == "trainer"
    )
    return rj["template"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", sorted(GPU_OVERLAYS))
def test_gpu_overlays_place_training_on_h100_nodes(overlay: str) -> None:
    pod = runtime_pod(render(f"overlays/{overlay}"))
    key, value = GPU_OVERLAYS[overlay]
    assert pod["nodeSelector"] == {key: value}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    (node,) = pod["containers"]
    assert node["name"] == "node", "Kubeflow Trainer injects PET_* only into container 'node'"
    assert node["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert node["resources"]["requests"]["nvidia.com/gpu"] == "8"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}


@pytest.mark.parametrize("path", ["base", "overlays/local-kind"])
def test_cpu_renderings_ask_for_no_gpu(path: str) -> None:
    docs = render(path)
    pod = runtime_pod(docs)
    assert "nodeSelector" not in pod and "tolerations" not in pod
    for label, p in all_pods(docs):
        for c in containers(p):
            assert "nvidia.com/gpu" not in json.dumps(c.get("resources", {})), (
                f"{label}/{c['name']} asks for a GPU in {path}"
            )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespaces_and_cluster_scope(overlay: str) -> None:
    for doc in render(f"overlays/{overlay}"):
        namespace = doc["metadata"].get("namespace")
        if doc["kind"] in ("Namespace", "ClusterTrainingRuntime"):
            assert namespace is None, f"{name_of(doc)} is cluster-scoped but has a namespace"
        else:
            assert namespace == "r1vflow", f"{name_of(doc)} is in namespace {namespace!r}"


def test_pipeline_role_allows_trainjobs_and_logs() -> None:
    docs = render("base")
    role = next(
        d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "r1vflow-pipeline"
    )
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    for group, resource in (("trainer.kubeflow.org", "trainjobs"), ("kubeflow.org", "pytorchjobs")):
        for verb in ("create", "get", "list", "watch", "delete"):
            assert (group, resource, verb) in granted, f"missing {verb} on {group}/{resource}"
    assert {("", "pods", "get"), ("", "pods", "list"), ("", "pods/log", "get")} <= granted
    assert not any(v in ("*", "escalate", "bind", "impersonate") for _, _, v in granted)
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == "r1vflow-pipeline"
    assert {"kind": "ServiceAccount", "name": "r1vflow-pipeline", "namespace": "r1vflow"} in (
        binding["subjects"]
    )
    assert any(
        d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "r1vflow-pipeline" for d in docs
    )


def test_mlflow_server_uses_postgres_and_s3_from_settings() -> None:
    docs = render("base")
    deploy = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"
    )
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    args = " ".join(c["command"] + c["args"])
    assert args.startswith("mlflow server ")
    assert (
        "--backend-store-uri=postgresql://$(MLFLOW_DB_USER):$(MLFLOW_DB_PASSWORD)"
        "@mlflow-postgres:5432/mlflow"
    ) in args
    assert "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in args
    settings = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert settings["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://mlflow/")
    assert settings["MLFLOW_TRACKING_URI"] == "http://mlflow.r1vflow.svc.cluster.local:5000"
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    assert sts["spec"]["serviceName"] == "mlflow-postgres"
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
