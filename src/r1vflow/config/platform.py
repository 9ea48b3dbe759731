"""The platform's sections: where and how stages run (resources), where models are stored
(storage), where runs are tracked (tracking), and what the cluster provides (cluster). None of
them changes what is computed, so none is fingerprinted."""

from __future__ import annotations

from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, field_validator, model_validator

from r1vflow.config.base import Strict

# --------------------------------------------------------------------------- platform


_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_REDACTED = "***"

# Where each URI's credentials belong instead (the message of a refused URI names them).
MLFLOW_CREDENTIALS_HINT = (
    "put the user name and password in the Secret named by cluster.mlflow_secret (keys "
    "username/password -> MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), or locally in "
    "the environment variables MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
S3_CREDENTIALS_HINT = (
    "put the keys in the Secret named by cluster.s3_secret (keys access_key/secret_key -> "
    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), or locally in the environment variables "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or R1VFLOW_S3_CREDENTIALS_FILE)")


def uri_userinfo(uri: str) -> bool:
    """True when `uri` (scheme://... or a bare host:port) carries `user[:password]@` before its
    host. Only the authority is looked at, so a path holding '@' (sqlite:////a@b/m.db) is fine."""
    text = uri.strip()
    if "://" not in text:
        text = "//" + text
    try:
        netloc = urlsplit(text).netloc
    except ValueError:
        return "@" in text.split("/", 3)[2] if text.startswith("//") else False
    return "@" in netloc


def redact_userinfo(uri: str) -> str:
    """`uri` with its user[:password] replaced by ***, for messages (nothing else removed)."""
    scheme, sep, rest = uri.strip().rpartition("://")
    authority, slash, path = rest.partition("/")
    host = authority.rpartition("@")[2]
    return f"{scheme}{sep}{_REDACTED}@{host}{slash}{path}"


def refuse_userinfo(what: str, uri: str, hint: str) -> None:
    """ValueError when `uri` carries credentials: names `what` and where they go (`hint`), and
    shows the URI only with the credentials replaced by ***."""
    if uri_userinfo(uri):
        raise ValueError(f"{what} must not contain credentials ({redact_userinfo(uri)}): "
                         f"they would be compiled into the pipeline and shown in logs; {hint}")


def _redacted_fields(data: Any, fields: tuple[str, ...]) -> Any:
    """A copy of raw section data whose URIs with credentials have them replaced by ***, so
    that the validation error (which quotes the input) never shows a password."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name in fields:
        value = out.get(name)
        if isinstance(value, str) and uri_userinfo(value):
            out[name] = redact_userinfo(value)
    return out


class Toleration(Strict):
    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class ResourceSpec(Strict):
    """Where, on what and how a stage runs on a cluster (pipelines/k8s.py compiles it into the IR).

    The local runner uses only `nodes` x `procs_per_node` (a torchrun with that many CPU processes);
    everything else is for Kubernetes. With nodes > 1 the stage's KFP task only launches and watches
    a Kubeflow Trainer TrainJob (it gets `cluster.launcher_cpu/memory`); cpu, memory, accelerators,
    node selector and tolerations then describe each TrainJob node instead.
    """

    cpu: str | None = Field(None, pattern=_QUANTITY,
                            description="CPU request, e.g. '8' or '500m' (also the limit unless cpu_limit).")
    cpu_limit: str | None = Field(None, pattern=_QUANTITY, description="CPU limit; default: cpu.")
    memory: str | None = Field(None, pattern=_QUANTITY,
                               description="Memory request, e.g. '64Gi' (also the limit unless memory_limit).")
    memory_limit: str | None = Field(None, pattern=_QUANTITY, description="Memory limit; default: memory.")
    accelerator_type: str | None = Field(None, description="e.g. nvidia.com/gpu or a GKE accelerator name.")
    accelerator_count: int | None = Field(None, ge=1)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    nodes: int = Field(1, ge=1, description="Machines; > 1 runs the stage as a Kubeflow Trainer TrainJob.")
    procs_per_node: int = Field(
        1, ge=1, description="torchrun processes per machine (one per GPU); locally nodes x procs "
                             "CPU processes under gloo.")
    timeout_seconds: int | None = Field(
        None, gt=0, description="Pod activeDeadlineSeconds (and the TrainJob's); None: no limit.")
    retries: int = Field(0, ge=0, le=10, description="KFP retries of a failed task (transient failures).")
    retry_backoff_seconds: int = Field(60, ge=0, description="Wait before the first retry.")
    retry_backoff_factor: float = Field(2.0, ge=1.0, description="Multiplier of the wait per retry.")
    retry_backoff_max_seconds: int = Field(3600, gt=0, description="Longest wait between retries.")
    caching: bool = Field(True, description="Let KFP reuse a previous result of this exact task.")
    scratch_size: str | None = Field(
        None, pattern=_QUANTITY,
        description="Generic ephemeral volume (a PVC living with the pod) mounted at /scratch.")
    scratch_storage_class: str | None = Field(
        None, description="StorageClass of the scratch volume; None: the cluster default.")

    _quantities_as_text = field_validator(
        "cpu", "cpu_limit", "memory", "memory_limit", "scratch_size", mode="before")(
        lambda v: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)

    @model_validator(mode="after")
    def _consistent(self) -> ResourceSpec:
        if (self.accelerator_type is None) != (self.accelerator_count is None):
            raise ValueError("give accelerator_type and accelerator_count together")
        if self.accelerator_count is not None and self.procs_per_node > self.accelerator_count:
            raise ValueError(f"procs_per_node ({self.procs_per_node}) exceeds accelerator_count "
                             f"({self.accelerator_count}): each process drives one accelerator")
        if self.scratch_storage_class and not self.scratch_size:
            raise ValueError("scratch_storage_class needs scratch_size")
        return self


class StorageConfig(Strict):
    # A refused URI's password must not reach a message: inputs are redacted before validation
    # (_redact) and pydantic's own text of an assignment error omits the input.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)
    credential_hints: ClassVar[dict[str, str]] = {"endpoint": S3_CREDENTIALS_HINT}
    backend: Literal["file", "s3"] = Field("file", description="Where model checkpoints are kept.")
    endpoint: str | None = Field(
        None, description="S3 endpoint host:port or http(s)://host[:port]; never user:password@ "
                          "(credentials come from the cluster.s3_secret Secret or env).")
    bucket: str = "r1vflow"
    prefix: str = "artifacts"
    secure: bool = Field(
        False, description="TLS to the S3 endpoint (an https:// endpoint implies it); "
                           "$R1VFLOW_S3_SECURE overrides it.")
    retry_budget_s: float = Field(
        120.0, gt=0, description="How long a stage keeps retrying an unreachable S3 server "
                                 "(publishing its model, fetching inputs) before it fails; "
                                 "$R1VFLOW_S3_RETRY_BUDGET_S overrides it.")

    _redact = model_validator(mode="before")(
        lambda data: _redacted_fields(data, ("endpoint",)))

    @field_validator("endpoint")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value is not None:
            refuse_userinfo("storage.endpoint", value, S3_CREDENTIALS_HINT)
        return value


class TrackingConfig(Strict):
    # A refused URI's password must not reach a message: inputs are redacted before validation
    # (_redact) and pydantic's own text of an assignment error omits the input.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)
    credential_hints: ClassVar[dict[str, str]] = {"tracking_uri": MLFLOW_CREDENTIALS_HINT}
    tracking_uri: str | None = Field(
        None, description="MLflow URI; default: $MLFLOW_TRACKING_URI, else sqlite in the output dir. "
                          "Never user:password@ (use cluster.mlflow_secret).")
    experiment_name: str | None = Field(None, description="MLflow experiment; default: r1vflow-<name>.")
    register_models: bool = Field(True, description="Register every produced model as a version.")
    promotion_metric: str = Field(
        "accuracy", description="evaluate metric (of the final model) that decides promotion.")
    promotion_min_delta: float = Field(
        0.0, ge=0, description="How much the candidate must beat the champion by.")

    _redact = model_validator(mode="before")(
        lambda data: _redacted_fields(data, ("tracking_uri",)))

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value is not None:
            refuse_userinfo("tracking.tracking_uri", value, MLFLOW_CREDENTIALS_HINT)
        return value


ImageRoleName = Literal["base", "trainer", "rollout"]


class ClusterConfig(Strict):
    """Names of what the cluster provides (docs/cluster.md): none of it changes what is computed.

    Credentials never appear here or in a compiled pipeline: tasks read them from Secrets.
    """

    s3_secret: str = Field(
        "r1vflow-s3-credentials",
        description="Secret with keys access_key/secret_key -> AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.")
    mlflow_secret: str | None = Field(
        None, description="Secret with keys username/password -> MLFLOW_TRACKING_USERNAME/PASSWORD "
                          "(an MLflow server with basic auth); None: the server needs no login.")
    hf_secret: str | None = Field(
        None, description="Secret with key token -> HF_TOKEN for the import_model task (hub "
                          "checkpoints that need a login); None: public checkpoints only.")
    settings_configmap: str = Field(
        "r1vflow-settings", description="ConfigMap with the S3 endpoint/bucket, MLflow URI, "
                                        "TrainJob namespace and training runtime.")
    service_account: str | None = Field(
        None, description="Service account the KFP run uses (submit); None: KFP's default.")
    trainjob_namespace: str | None = Field(
        None, description="Namespace of multi-node TrainJobs; None: $R1VFLOW_TRAINJOB_NAMESPACE.")
    training_runtime: str | None = Field(
        None, description="ClusterTrainingRuntime of TrainJobs; None: $R1VFLOW_TRAINING_RUNTIME.")
    images: dict[ImageRoleName, str] = Field(
        default_factory=dict, description="Image overrides per role (base/trainer/rollout), "
                                          "e.g. a private registry mirror.")
    image_pull_secrets: list[str] = Field(default_factory=list)
    launcher_cpu: str = Field("1", pattern=_QUANTITY,
                              description="CPU of a task that only launches and watches a TrainJob.")
    launcher_memory: str = Field("4Gi", pattern=_QUANTITY,
                                 description="Memory of a task that launches a TrainJob.")

    _quantities_as_text = field_validator("launcher_cpu", "launcher_memory", mode="before")(
        lambda v: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)
