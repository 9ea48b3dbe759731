"""What a stage needs when it runs as a KFP task on a Kubernetes cluster: the names of the
environment variables every task gets (pipelines/k8s.py compiles them into the IR) and the MLflow
parent run of the KFP run.

Locally `r1vflow run` opens the parent run and hands its id to the tasks in the environment. On a
cluster nobody sits between KFP and the tasks, and a pipeline parameter would change every task's
cache key, so each task finds the parent itself: KFP labels every pod of a run with
`pipeline/runid`, the task reads it through the downward API (`R1VFLOW_KFP_RUN_ID`, a static field
reference, so the cache key does not change) and looks up the MLflow run tagged
`r1vflow.kfp_run_id=<that id>`, creating it when it is the first task of the run.

    parent = attach_parent_run(tracking_uri, "r1vflow-r1v2-38b", "r1v2-38b", fingerprint)
    ...
    report_to_parent(tracking_uri, "sft", "succeeded", metrics, last_stage=False)
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import MutableMapping

from r1vflow.storage.scratch import POD_NAMESPACE_ENV, on_cluster
from r1vflow.tracking.runs import PARENT_ENV

log = logging.getLogger(__name__)

KFP_RUN_ID_ENV = "R1VFLOW_KFP_RUN_ID"
KFP_WORKFLOW_ENV = "R1VFLOW_KFP_WORKFLOW"
KFP_RUN_TAG = "r1vflow.kfp_run_id"
LABEL_PREFIX = "r1vflow.io/"

# env var -> downward-API field path, on every task (platform config: not part of the cache key).
FIELD_PATH_ENV: dict[str, str] = {
    POD_NAMESPACE_ENV: "metadata.namespace",
    KFP_RUN_ID_ENV: "metadata.labels['pipeline/runid']",
    KFP_WORKFLOW_ENV: "metadata.labels['workflows.argoproj.io/workflow']",
}
# Secret key -> env var (manifests/base/namespaced/secrets.yaml).
S3_SECRET_KEYS: dict[str, str] = {"access_key": "AWS_ACCESS_KEY_ID",
                                  "secret_key": "AWS_SECRET_ACCESS_KEY"}
MLFLOW_SECRET_KEYS: dict[str, str] = {"username": "MLFLOW_TRACKING_USERNAME",
                                      "password": "MLFLOW_TRACKING_PASSWORD"}
# Keys of the settings ConfigMap (manifests/base/namespaced/settings.yaml) a task reads, as env.
SETTINGS_KEYS: tuple[str, ...] = (
    "R1VFLOW_S3_ENDPOINT", "R1VFLOW_S3_BUCKET", "R1VFLOW_S3_SECURE", "MLFLOW_TRACKING_URI",
    "R1VFLOW_TRAINJOB_NAMESPACE", "R1VFLOW_TRAINING_RUNTIME",
)
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]")


def label_value(text: str) -> str:
    """`text` as a valid Kubernetes label value: [A-Za-z0-9._-], at most 63 characters,
    starting and ending alphanumeric (empty when nothing is left)."""
    value = _LABEL_VALUE_BAD.sub("-", text)[:63]
    return value.strip("._-")


def kfp_run_key(environ: MutableMapping[str, str] | None = None) -> str | None:
    """The KFP run id of this pod, else its Argo workflow name, else None."""
    env = os.environ if environ is None else environ
    return env.get(KFP_RUN_ID_ENV) or env.get(KFP_WORKFLOW_ENV) or None


def find_or_create_parent_run(tracking_uri: str, experiment: str, run_name: str, run_key: str,
                              tags: dict[str, str]) -> str:
    """The MLflow parent run tagged `r1vflow.kfp_run_id=run_key`, created when missing.

    Two tasks of one KFP run that start together may both create one; each then keeps the oldest
    (start time, then run id) and deletes its own if it lost, so both settle on the same run."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    query = f"tags.`{KFP_RUN_TAG}` = '{run_key}'"

    def candidates() -> list:
        runs = client.search_runs([exp_id], filter_string=query, max_results=50)
        runs = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    found = candidates()
    if found:
        return found[0].info.run_id
    mine = client.create_run(exp_id, run_name=run_name, tags={**tags, KFP_RUN_TAG: run_key})
    winner = candidates()[0].info.run_id
    if winner != mine.info.run_id:
        client.delete_run(mine.info.run_id)
    return winner


def attach_parent_run(tracking_uri: str | None, experiment: str, exp_name: str, fingerprint: str,
                      environ: MutableMapping[str, str] | None = None) -> str | None:
    """On a cluster, find or create the KFP run's MLflow parent run and export its id as
    $R1VFLOW_MLFLOW_PARENT_RUN_ID (and $R1VFLOW_KFP_RUN) for this process and its children.

    Does nothing locally, without a tracking URI, or when a parent is already given."""
    env = os.environ if environ is None else environ
    key = kfp_run_key(env)
    if not (tracking_uri and on_cluster(env) and key) or env.get(PARENT_ENV):
        return None
    tags = {"r1vflow.config_fingerprint": fingerprint, "r1vflow.pipeline": f"r1vflow-{exp_name}",
            "r1vflow.git_commit": env.get("R1VFLOW_GIT_COMMIT", "")}
    parent = find_or_create_parent_run(tracking_uri, experiment, exp_name, key, tags)
    env[PARENT_ENV] = parent
    env.setdefault("R1VFLOW_KFP_RUN", f"kfp:{key}")
    return parent


def finish_parent_run(tracking_uri: str | None, experiment: str, exp_name: str, fingerprint: str,
                      environ: MutableMapping[str, str] | None = None) -> None:
    """On a cluster, after the promotion gate: mark the parent run FINISHED (tag
    `r1vflow.stage.decide_promotion`). The gate is the DAG's last task and runs only when every
    stage succeeded, executed or served from KFP's cache; a fully cached run executes no stage,
    so without this its parent run (made by configure) would stay RUNNING. Never raises."""
    try:
        attach_parent_run(tracking_uri, experiment, exp_name, fingerprint, environ)
    except Exception as err:  # noqa: BLE001 (reported, not raised: see docstring)
        log.warning("could not find the MLflow parent run: %s", err)
        return
    report_to_parent(tracking_uri, "decide_promotion", "succeeded", {}, last_stage=True,
                     environ=environ)


def report_to_parent(tracking_uri: str | None, stage: str, status: str,
                     metrics: dict[str, float], last_stage: bool,
                     environ: MutableMapping[str, str] | None = None) -> None:
    """On a cluster, record a stage's outcome on the parent run: tag `r1vflow.stage.<stage>`,
    its `accuracy/*` metrics, and the parent's status (FAILED on a failure, FINISHED after the
    last stage, RUNNING again when a retried stage succeeds). Never raises: a tracking hiccup
    here must not hide the stage's own result or error."""
    env = os.environ if environ is None else environ
    parent = env.get(PARENT_ENV)
    if not (tracking_uri and parent and on_cluster(env)):
        return
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri)
        client.set_tag(parent, f"r1vflow.stage.{stage}", status)
        for key, value in metrics.items():
            if key.startswith("accuracy/"):
                client.log_metric(parent, key, float(value))
        if status != "succeeded":
            client.set_terminated(parent, "FAILED")
        elif last_stage:
            client.set_terminated(parent, "FINISHED")
        else:
            client.update_run(parent, status="RUNNING")
    except Exception as err:  # noqa: BLE001 (reported, not raised: see docstring)
        log.warning("could not update the MLflow parent run %s: %s", parent, err)
