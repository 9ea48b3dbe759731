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
import time
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

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    exp_id = ensure_experiment(client, experiment, tracking_uri)
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    log_params_batched(client, run.info.run_id, params or {})
    return run.info.run_id


def log_params_batched(client, run_id: str, params: dict[str, Any]) -> None:
    """Log `params` (values cut to MLflow's length limit) on a run, 100 per call (MLflow's
    batch limit)."""
    from mlflow.entities import Param

    items = list(_clean_params(params).items())
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + 100]])


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


def unreachable(tracking_uri: str, timeout_s: float = 5.0) -> str | None:
    """Why an http(s) MLflow server cannot be used (one line naming the URI), None when its
    /health answers (or the store is a local file / database, which needs no server)."""
    import urllib.error
    import urllib.request

    if not tracking_uri.startswith(("http://", "https://")):
        return None
    import ssl

    url = tracking_uri.rstrip("/") + "/health"
    context = None  # TLS as MLflow's own client is told to do it
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context = ssl._create_unverified_context()  # noqa: S323 (the user asked for it)
    elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        context = ssl.create_default_context(cafile=os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"])
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:  # noqa: S310
            if response.status < 500:
                return None
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        if err.code < 500:
            return None
        reason = f"HTTP {err.code}"
    except (OSError, ValueError) as err:
        reason = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
    return (f"MLflow at {tracking_uri} is unreachable ({reason}): start it, or point "
            "tracking.tracking_uri / MLFLOW_TRACKING_URI at a running server; nothing was "
            "trained")


@contextmanager
def _fail_fast(retries: int = 0, timeout_s: int = 10) -> Iterator[None]:
    """MLflow's HTTP client without its minutes-long retry loop, while inside (per-step
    metrics: our own buffer retries them)."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
             "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class StageTracker:
    """What a stage may record: params, step metrics, data sets and model versions.

    Step metrics survive an MLflow outage: a failed `log_metrics` keeps the values (with
    their step and time) in a buffer, prints one warning, and training goes on; the buffer is
    retried every `retry_every_s` seconds and at the end (`reconcile`), which returns how
    many values could still not be logged (summary.json reports them)."""

    def __init__(self, run_id: str | None, model_prefix: str, register: bool = True,
                 retry_every_s: float = 30.0):
        self.run_id = run_id
        self.model_prefix = model_prefix
        self.enabled = run_id is not None
        self.register = register
        self.retry_every_s = retry_every_s
        self._pending: list[tuple[dict[str, float], int | None, int]] = []
        self._down_since: float | None = None
        self._last_try = 0.0
        # every metric logged with a step, tracking on or off: what the stage's report plots
        self.history: dict[str, list[tuple[int, float]]] = {}

    def log_params(self, params: dict[str, Any]) -> None:
        if self.enabled:
            import mlflow

            log_params_batched(mlflow.MlflowClient(), self.run_id, params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log now, or buffer while MLflow is unreachable (never raises for an outage)."""
        if step is not None:  # every metric logged with a step: what the report plots
            for key, value in metrics.items():
                self.history.setdefault(key, []).append((int(step), float(value)))
        if not (self.enabled and metrics):
            return
        clean = {_metric_key(k): float(v) for k, v in metrics.items()}
        self._pending.append((clean, step, int(time.time() * 1000)))
        if self._down_since is not None and time.monotonic() - self._last_try < self.retry_every_s:
            return
        self._flush(fast=True)

    @property
    def unlogged(self) -> int:
        """Metric values still in the buffer."""
        return sum(len(m) for m, _, _ in self._pending)

    def _flush(self, fast: bool) -> bool:
        import mlflow
        from mlflow.entities import Metric

        self._last_try = time.monotonic()
        try:
            with _fail_fast(retries=0 if fast else 3):
                client = mlflow.MlflowClient()
                while self._pending:
                    values, step, stamp = self._pending[0]
                    client.log_batch(self.run_id, metrics=[
                        Metric(k, v, stamp, step or 0) for k, v in values.items()])
                    self._pending.pop(0)
        except Exception as err:  # noqa: BLE001 (an outage must not stop training)
            if self._down_since is None:
                print(f"warning: MLflow unreachable ({type(err).__name__}); metrics are "
                      f"buffered and retried every {self.retry_every_s:.0f} s, training goes "
                      "on", flush=True)
                self._down_since = time.monotonic()
            return False
        if self._down_since is not None:
            print("MLflow reachable again: buffered metrics logged", flush=True)
            self._down_since = None
        return True

    def reconcile(self) -> int:
        """Log what the buffer holds (3 HTTP retries with backoff, ~15 s when MLflow stays
        down); returns the values that still could not be logged (0 when all were)."""
        if self.enabled and self._pending:
            self._flush(fast=False)
        return self.unlogged

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


    def find_version(self, stage: str, suffix: str, tags: dict[str, str]) -> tuple[str, dict] | None:
        """The newest version of `<prefix>-<stage><suffix>` carrying all `tags` ('name/version'
        and its tags), None when there is none or the registry cannot say."""
        if not (self.enabled and self.register):
            return None
        import mlflow

        name = registered_name(self.model_prefix, stage, suffix)
        query = f"name='{name}'" + "".join(f" and tags.`{k}` = '{v}'" for k, v in tags.items())
        try:
            found = mlflow.MlflowClient().search_model_versions(query)
        except Exception:  # noqa: BLE001 (then a new version is registered)
            return None
        if not found:
            return None
        newest = max(found, key=lambda v: int(v.version))
        return f"{name}/{newest.version}", dict(newest.tags)

    def delete_version(self, name_version: str) -> bool:
        """Delete a registered version (its files never made it to the store); False with a
        warning when MLflow refuses or cannot be reached (the version keeps its
        `r1vflow.status=incomplete` tag then)."""
        if not (self.enabled and self.register):
            return False
        import mlflow

        name, version = name_version.rsplit("/", 1)
        try:
            mlflow.MlflowClient().delete_model_version(name, version)
        except Exception as err:  # noqa: BLE001 (best effort: the original error matters)
            print(f"warning: could not delete {name_version}, left tagged "
                  f"r1vflow.status=incomplete: {type(err).__name__}: {err}", flush=True)
            return False
        return True

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure as a PNG artifact of the stage run (MLflow shows it inline)."""
        if self.enabled:
            from r1vflow.tracking.client import mlflow_client

            mlflow_client().log_figure(self.run_id, figure, artifact_file)

    def log_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        """The files of `local_dir` as artifacts of the stage run, under `artifact_path`."""
        if self.enabled:
            from r1vflow.tracking.client import mlflow_client

            mlflow_client().log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            from r1vflow.tracking.client import mlflow_client

            mlflow_client().log_text(self.run_id, text, artifact_file)

    def log_table(self, rows: dict[str, list], artifact_file: str) -> None:
        """Columns of equal length as an MLflow table (filterable in the UI's evaluation view)."""
        if self.enabled:
            from r1vflow.tracking.client import mlflow_client

            mlflow_client().log_table(self.run_id, rows, artifact_file)

    def log_parent_table(self, rows: dict[str, list], artifact_file: str) -> None:
        """A table on the pipeline run's parent MLflow run ($R1VFLOW_MLFLOW_PARENT_RUN_ID),
        where a reader of the whole run looks first; nothing without tracking or a parent."""
        parent = os.environ.get(PARENT_ENV)
        if self.enabled and parent:
            from r1vflow.tracking.client import mlflow_client

            mlflow_client().log_table(parent, rows, artifact_file)

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
    run = mlflow.start_run(run_name=stage, tags={**tags, f"{TAG_PREFIX}stage": stage},
                           log_system_metrics=system_metrics)
    status = "FAILED"
    try:
        yield StageTracker(run.info.run_id, model_prefix, register=register)
        status = "FINISHED"
    finally:
        try:  # an MLflow outage at the very end must not fail a stage that did its work
            with _fail_fast(retries=2):
                mlflow.end_run(status)
        except Exception as err:  # noqa: BLE001
            print(f"warning: could not close MLflow run {run.info.run_id}: "
                  f"{type(err).__name__}", flush=True)
