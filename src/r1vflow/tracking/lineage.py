"""Answers "where did this model come from?" from MLflow alone.

Every registered version carries `r1vflow.parent` (`name/version` of the model it was trained from),
its storage URI and manifest digest, the data set digest and config fingerprint; the run that
produced it holds its data set inputs. `walk_lineage` follows the parent tags to the root (the
bootstrap bases, or an imported base model); `compare_runs` puts pipeline runs side by side.
"""

from __future__ import annotations

from typing import Any

from r1vflow.tracking.client import mlflow_client

MAX_DEPTH = 64


class LineageError(RuntimeError):
    """A version or run cannot be found, or the chain is broken."""


def _datasets(client, run_id: str | None) -> list[dict[str, str]]:
    if not run_id:
        return []
    inputs = client.get_run(run_id).inputs
    return [{"name": d.dataset.name, "digest": d.dataset.digest, "source": d.dataset.source}
            for d in (inputs.dataset_inputs if inputs else [])]


def walk_lineage(name: str, version: str, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """The chain from `name/version` back to its root, nearest first."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    current: str | None = f"{name}/{version}"
    while current:
        if current in seen or len(chain) >= MAX_DEPTH:
            raise LineageError(f"r1vflow.parent tags form a cycle at {current}")
        seen.add(current)
        model, number = current.rsplit("/", 1)
        try:
            mv = client.get_model_version(model, number)
        except MlflowException as err:
            where = "" if not chain else f" (parent of {chain[-1]['model_version']})"
            raise LineageError(f"model version {current}{where} not found: {err.message}") from None
        tags = dict(mv.tags)
        chain.append({
            "model_version": current,
            "stage": tags.get("r1vflow.stage", ""),
            "parent": tags.get("r1vflow.parent") or None,
            "storage_uri": tags.get("r1vflow.storage_uri", ""),
            "manifest_sha256": tags.get("r1vflow.manifest_sha256"),
            "dataset_digest": tags.get("r1vflow.dataset_digest") or None,
            "config_fingerprint": tags.get("r1vflow.config_fingerprint"),
            "git_commit": tags.get("r1vflow.git_commit") or None,
            "kfp_run": tags.get("r1vflow.kfp_run") or None,
            "run_id": mv.run_id,
            "datasets": _datasets(client, mv.run_id),
            "aliases": list(getattr(mv, "aliases", []) or []),
        })
        current = tags.get("r1vflow.parent") or None
    return chain


def config_diff(configs: list[dict[str, str]]) -> dict[str, list[str | None]]:
    """The keys whose values differ between `configs` (None where one lacks the key), sorted."""
    keys = sorted({k for config in configs for k in config})
    rows = {k: [config.get(k) for config in configs] for k in keys}
    return {k: values for k, values in rows.items() if len(set(values)) > 1}


def compare_runs(run_ids: list[str], tracking_uri: str | None = None
                 ) -> tuple[dict[str, list[float | None]], list[dict[str, Any]]]:
    """What MLflow's run comparison shows for pipeline (parent) runs: metric name -> one value
    per run (None where a run lacks it), and per run its name, id, status, start (ms), duration
    (s), and its params (the flattened experiment config the driver logs, plus the run-time
    overrides it was given, tag `r1vflow.overrides`)."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(tracking_uri)
    runs = []
    for run_id in run_ids:
        try:
            runs.append(client.get_run(run_id))
        except MlflowException as err:
            raise LineageError(f"run {run_id} not found: {err.message}") from None
    names = sorted({k for run in runs for k in run.data.metrics})
    rows = {k: [run.data.metrics.get(k) for run in runs] for k in names}
    meta = [{"run_id": run.info.run_id, "name": run.info.run_name or "",
             "status": run.info.status, "start_time": run.info.start_time,
             "duration_s": ((run.info.end_time - run.info.start_time) / 1000
                            if run.info.end_time else None),
             "params": {**run.data.params, **{k: v for k, v in run.data.tags.items()
                                              if k == "r1vflow.overrides"}}} for run in runs]
    return rows, meta
