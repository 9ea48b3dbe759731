"""MLflow tracking: one parent run per pipeline run, one nested run per stage, model versions.

The parent run is opened by the driver (`r1vflow run`) and its id reaches the stage processes through
the environment (`R1VFLOW_MLFLOW_PARENT_RUN_ID`), never through a pipeline parameter: parameters are
part of KFP's cache key, and a new parent id per run would defeat the cache.

Every produced model is an MLflow 3 external model (its bytes stay in our store) registered as a
version of `<experiment>-<stage>` with lineage tags (`r1vflow.*`), so `r1vflow.parent` chains a
final model back to the bootstrap bases.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from r1vflow.storage.settings import tracking_uri_from_env

PARENT_ENV = "R1VFLOW_MLFLOW_PARENT_RUN_ID"
TAG_PREFIX = "r1vflow."
_MAX_PARAM_LEN = 6000


def default_tracking_uri(output_dir: Path, configured: str | None) -> str:
    """Config first, then $MLFLOW_TRACKING_URI, else a SQLite file in the output dir."""
    if configured:
        return configured
    from_env = tracking_uri_from_env()  # refused when it carries credentials
    if from_env:
        return from_env
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its artifacts (reports, figures,
    tables): `mlartifacts/` beside the database, not MLflow's default `./mlruns` of whatever
    directory the process runs in. None for a server, which decides itself."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()


def ensure_experiment(client, name: str, tracking_uri: str) -> str:
    """The id of MLflow experiment `name`, created (see artifact_location) when missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(tracking_uri))


def experiment_name(exp_name: str, configured: str | None) -> str:
    return configured or f"r1vflow-{exp_name}"


def git_commit(cwd: Path | None = None) -> str | None:
    """The checkout's commit (with '-dirty' when it has changes), or None outside git."""
    if os.environ.get("R1VFLOW_GIT_COMMIT"):
        return os.environ["R1VFLOW_GIT_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def _clean_params(params: dict[str, Any]) -> dict[str, str]:
    return {k: str(v)[:_MAX_PARAM_LEN] for k, v in params.items()}


def start_parent_run(tracking_uri: str, experiment: str, run_name: str,
                     tags: dict[str, str], params: dict[str, Any] | None = None) -> str:
    """Create the pipeline run's parent MLflow run and return its id (the run stays open).
    `params`: the whole experiment config, flattened, so that MLflow's run comparison (and
    `r1vflow compare`) shows how two pipeline runs' configs differ."""
    import mlflow
    from mlflow.entities import Param

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    exp_id = ensure_experiment(client, experiment, tracking_uri)
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    items = list(_clean_params(params or {}).items())
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
    return run.info.run_id


def finish_parent_run(tracking_uri: str, run_id: str, status: str,
                      metrics: dict[str, float], tags: dict[str, str]) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, "FINISHED" if status == "succeeded" else "FAILED")


class StageTracker:
    """What a stage may record: params, step metrics, data sets and model versions."""

    def __init__(self, run_id: str | None, model_prefix: str, register: bool = True):
        self.run_id = run_id
        self.model_prefix = model_prefix
        self.enabled = run_id is not None
        self.register = register
        # every metric logged with a step, tracking on or off: what the stage's report plots
        self.history: dict[str, list[tuple[int, float]]] = {}

    def log_params(self, params: dict[str, Any]) -> None:
        if self.enabled:
            import mlflow

            items = list(_clean_params(params).items())
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                mlflow.log_params(dict(items[i:i + 100]), run_id=self.run_id)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if step is not None:
            for key, value in metrics.items():
                self.history.setdefault(key, []).append((int(step), float(value)))
        if self.enabled and metrics:
            import mlflow

            clean = {_metric_key(k): float(v) for k, v in metrics.items()}
            mlflow.log_metrics(clean, step=step, run_id=self.run_id)

    def log_dataset(self, name: str, digest: str, source: str, context: str) -> None:
        """Record a data set input (name, digest, where it lives) on the stage run.

        `source` is a path or URI of the data, or "procedural:<generator>" for data that is
        regenerated from code and a seed rather than stored."""
        if not self.enabled:
            return
        import mlflow
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource, S3ArtifactDatasetSource

        if source.startswith("procedural:"):
            src = CodeDatasetSource({"generator": source.split(":", 1)[1]})
        elif source.startswith("s3://"):
            src = S3ArtifactDatasetSource(source)
        else:
            src = LocalArtifactDatasetSource(source)
        # MLflow keeps at most 36 characters of a digest; the full one is in our tags.
        dataset = MetaDataset(source=src, name=name, digest=digest[:36])
        mlflow.log_input(dataset, context=context)

    def register_model(self, stage: str, storage_uri: str, tags: dict[str, str],
                       suffix: str = "") -> str | None:
        """Register `storage_uri` as a new version of `registered_name(prefix, stage, suffix)`;
        returns 'name/version'."""
        if not (self.enabled and self.register):
            return None
        import mlflow

        name = registered_name(self.model_prefix, stage, suffix)
        all_tags = {f"{TAG_PREFIX}stage": stage, f"{TAG_PREFIX}storage_uri": storage_uri, **tags}
        all_tags = {k: v for k, v in all_tags.items() if v is not None}
        # An external model: MLflow keeps the metadata, the bytes stay in our store.
        logged = mlflow.create_external_model(name=name, source_run_id=self.run_id, tags=all_tags)
        version = mlflow.register_model(f"models:/{logged.model_id}", name, tags=all_tags)
        client = mlflow.MlflowClient()
        experiment_id = client.get_run(self.run_id).info.experiment_id
        client.update_model_version(version.name, version.version, description=version_description(
            stage, all_tags, self.run_id, experiment_id))
        return f"{version.name}/{version.version}"


    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure as a PNG artifact of the stage run (MLflow shows it inline)."""
        if self.enabled:
            from r1vflow.tracking.client import mlflow_client

            mlflow_client().log_figure(self.run_id, figure, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            from r1vflow.tracking.client import mlflow_client

            mlflow_client().log_text(self.run_id, text, artifact_file)

    def log_table(self, rows: dict[str, list], artifact_file: str) -> None:
        """Columns of equal length as an MLflow table (filterable in the UI's evaluation view)."""
        if self.enabled:
            from r1vflow.tracking.client import mlflow_client

            mlflow_client().log_table(self.run_id, rows, artifact_file)

    def describe(self, run_name: str, description: str) -> None:
        """The run's name and its Markdown description (MLflow's `mlflow.note.content`)."""
        if self.enabled:
            from r1vflow.tracking.client import mlflow_client

            client = mlflow_client()
            client.set_tag(self.run_id, "mlflow.runName", run_name)
            client.set_tag(self.run_id, "mlflow.note.content", description)

    def set_version_tag(self, name_version: str, key: str, value: str) -> None:
        if self.enabled and self.register:
            import mlflow

            name, version = name_version.rsplit("/", 1)
            mlflow.MlflowClient().set_model_version_tag(name, version, key, value)


def registered_name(experiment: str, stage: str, suffix: str = "") -> str:
    """A registered model's name, in one form: lowercase words joined by dashes, like the
    experiment's name (a DNS-1123 label): `tiny-train-reward-model`, `tiny-bootstrap-substitute`."""
    return f"{experiment}-{stage}{suffix}".replace("_", "-")


def _version_link(name_version: str) -> str:
    """A Markdown link to a model version's page in the MLflow UI (its hash route)."""
    name, number = name_version.rsplit("/", 1)
    return f"[{name_version}](#/models/{name}/versions/{number})"


def version_description(stage: str, tags: dict[str, str], run_id: str,
                        experiment_id: str) -> str:
    """A registered version's Markdown description: the stage and run that made it, its
    parent version, data digest, KFP run and storage (links into the MLflow UI)."""
    run_link = f"[{run_id[:8]}](#/experiments/{experiment_id}/runs/{run_id})"
    parent = tags.get(f"{TAG_PREFIX}parent") or ""
    kfp_run = tags.get(f"{TAG_PREFIX}kfp_run") or ""
    if kfp_run.startswith("local:"):  # a local run: its MLflow parent run stands for it
        parent_run = kfp_run.split(":", 1)[1]
        kfp_run = f"[{kfp_run}](#/experiments/{experiment_id}/runs/{parent_run})"
    rows = [
        ("trained by", f"the **{stage}** stage, run {run_link}"),
        ("parent version", _version_link(parent) if parent else "none (a base model)"),
        ("data digest", f"`{tags.get(f'{TAG_PREFIX}dataset_digest') or 'none'}`"),
        ("KFP run", kfp_run or "none"),
        ("stored at", f"`{tags.get(f'{TAG_PREFIX}storage_uri', '')}`"),
        ("config fingerprint", f"`{(tags.get(f'{TAG_PREFIX}config_fingerprint') or '')[:16]}`"),
    ]
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def _metric_key(key: str) -> str:
    # MLflow metric names allow alphanumerics, _ - . / and spaces.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


@contextmanager
def stage_run(tracking_uri: str | None, experiment: str, stage: str, model_prefix: str,
              register: bool = True, system_metrics: bool = False) -> Iterator[StageTracker]:
    """A nested MLflow run under the parent named by $R1VFLOW_MLFLOW_PARENT_RUN_ID; with
    `system_metrics`, MLflow samples CPU, memory, disk, network (and GPU where there is one)
    into it as `system/*` while it is open.

    Without a tracking URI nothing is recorded (a stage called from a test, say)."""
    if not tracking_uri:
        yield StageTracker(None, model_prefix, register=False)
        return
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=ensure_experiment(mlflow.MlflowClient(), experiment,
                                                          tracking_uri))
    parent = os.environ.get(PARENT_ENV)
    tags = {"mlflow.parentRunId": parent} if parent else {}
    with mlflow.start_run(run_name=stage, tags={**tags, f"{TAG_PREFIX}stage": stage},
                          log_system_metrics=system_metrics) as run:
        yield StageTracker(run.info.run_id, model_prefix, register=register)
