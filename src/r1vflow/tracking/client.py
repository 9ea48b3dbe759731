"""The one MLflow client helper: tracking and registry at the same URI."""

from __future__ import annotations


def mlflow_client(tracking_uri: str | None = None):
    """An `MlflowClient` for `tracking_uri` (tracking and model registry), or for MLflow's
    current URI when None (what `mlflow.set_tracking_uri` or $MLFLOW_TRACKING_URI chose)."""
    import mlflow

    if tracking_uri is None:
        return mlflow.MlflowClient()
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
