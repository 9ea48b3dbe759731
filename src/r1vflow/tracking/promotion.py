"""Model promotion with MLflow aliases: `candidate` for every evaluated final model, `champion`
for the best one so far on the configured metric.

evaluate gives the final model (the last training stage's) the alias `candidate` and tags it with
its score (`r1vflow.eval.<metric>`). The pipeline's gate (`decide_promotion`, then `promote` under
`dsl.If`) moves `champion` to the candidate only if it beats the current champion's score, or if
there is no champion yet.
"""

from __future__ import annotations

import json

from r1vflow.tracking.client import mlflow_client

CANDIDATE, CHAMPION = "candidate", "champion"
SCORE_TAG = "r1vflow.eval.{metric}"


def beats(candidate: float, champion: float | None, min_delta: float = 0.0) -> bool:
    """Pure rule: promote when there is no champion, or the candidate is better by > min_delta."""
    return champion is None or candidate > champion + min_delta


def mark_candidate(name_version: str, metric: str, score: float) -> None:
    """Tag the version with its score and point the model's `candidate` alias at it."""
    name, version = name_version.rsplit("/", 1)
    client = mlflow_client()
    client.set_model_version_tag(name, version, SCORE_TAG.format(metric=metric), str(score))
    client.set_registered_model_alias(name, CANDIDATE, version)


def champion_score(name: str, metric: str) -> tuple[str | None, float | None]:
    """The current champion's version and score, or (None, None) when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        mv = mlflow_client().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    raw = mv.tags.get(SCORE_TAG.format(metric=metric))
    return str(mv.version), (float(raw) if raw is not None else None)


def evaluation_candidate(evaluation_json: str) -> tuple[str | None, float | None, str]:
    """(candidate 'name/version', its score, metric) from evaluate's StageResult JSON."""
    result = json.loads(evaluation_json)
    metrics = result.get("metrics", {})
    metric = next((k.split("/", 1)[1] for k in metrics if k.startswith("promotion_metric/")),
                  "accuracy")
    return result.get("model_version"), metrics.get("promotion_score"), metric


def decide(evaluation_json: str, min_delta: float) -> bool:
    candidate, score, metric = evaluation_candidate(evaluation_json)
    if candidate is None or score is None:
        return False
    _, current = champion_score(candidate.rsplit("/", 1)[0], metric)
    return beats(score, current, min_delta)


def promote(evaluation_json: str) -> str:
    """Move `champion` to the candidate; returns 'name/version'."""
    candidate, _, _ = evaluation_candidate(evaluation_json)
    if candidate is None:
        raise ValueError("evaluation names no candidate model to promote")
    name, version = candidate.rsplit("/", 1)
    mlflow_client().set_registered_model_alias(name, CHAMPION, version)
    return candidate
