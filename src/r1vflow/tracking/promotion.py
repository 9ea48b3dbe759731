"""Model promotion with MLflow aliases: `candidate` for every evaluated final model, `champion`
for the best one so far on the configured metric.

evaluate gives the final model (the last training stage's) the alias `candidate` and tags it with
its score (`r1vflow.eval.<metric>`). The pipeline's gate (`decide_promotion`, then `promote` under
`dsl.If`) moves `champion` to the candidate only if it beats the current champion's score, or if
there is no champion yet.

A candidate with a monitor flag (evaluate's `monitor_flag/<flag>` metrics: reward hacking,
format collapse or the RM-vs-rule gap during its training, or a hallucination rate above
`evaluate.max_hallucination_rate`) is refused whatever its score, and the reason names the flags.

The gate fails closed: "no champion" only when the registry says so (the model or its
`champion` alias does not exist). Any other error reading the champion (registry unreachable,
broken store, a tag that is not a number) and a champion without a score tag block promotion.
`gate` returns the decision with its reason; `decide` (the pipeline's task) prints the reason and
records it on the candidate version as the tag `r1vflow.promotion.decision`, so the run's
report shows why the champion did or did not move.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from r1vflow.tracking.client import mlflow_client

CANDIDATE, CHAMPION = "candidate", "champion"
FLAG_METRIC = "monitor_flag/{flag}"  # evaluate's metric for each monitor flag of the candidate
SCORE_TAG = "r1vflow.eval.{metric}"
DECISION_TAG = "r1vflow.promotion.decision"
STATUS_TAG = "r1vflow.status"  # set by stages.registration (StageContext.register)


class ChampionUnreadable(RuntimeError):
    """The registry could not say whether there is a champion, or what it scored."""


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    champion_version: str | None = None
    champion_score: float | None = None
    already: bool = False  # the candidate is the champion already: nothing to move

    @property
    def verdict(self) -> str:
        """What the gate's log line and summary.json call the outcome."""
        if self.already:
            return "not needed"
        return "approved" if self.promote else "blocked"


def beats(candidate: float, champion: float | None, min_delta: float = 0.0) -> bool:
    """Pure rule: promote when there is no champion, or the candidate is better by > min_delta."""
    return champion is None or candidate > champion + min_delta


def mark_candidate(name_version: str, metric: str, score: float) -> None:
    """Tag the version with its score and point the model's `candidate` alias at it."""
    name, version = name_version.rsplit("/", 1)
    client = mlflow_client()
    client.set_model_version_tag(name, version, SCORE_TAG.format(metric=metric), str(score))
    client.set_registered_model_alias(name, CANDIDATE, version)


def _no_such_alias(exc: Exception) -> bool:
    """True when the registry answered that the model or its alias does not exist (the file and
    SQL stores say INVALID_PARAMETER_VALUE "... alias champion not found" for a missing alias,
    RESOURCE_DOES_NOT_EXIST for a missing model); anything else is an error."""
    code = getattr(exc, "error_code", "")
    if code == "RESOURCE_DOES_NOT_EXIST":
        return True
    text = str(exc).lower()
    return code == "INVALID_PARAMETER_VALUE" and "alias" in text and "not found" in text


def champion_score(name: str, metric: str) -> tuple[str | None, float | None]:
    """The current champion's version and score: (None, None) when the registry says there is no
    champion, (version, None) for a champion without a score tag. ChampionUnreadable on any
    other failure (never read as "no champion")."""
    from mlflow.exceptions import MlflowException

    try:
        mv = mlflow_client().get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if _no_such_alias(exc):
            return None, None
        raise ChampionUnreadable(f"{exc.error_code}: {exc.message}") from exc
    except Exception as exc:  # connection errors, broken stores: the answer is unknown
        raise ChampionUnreadable(f"{type(exc).__name__}: {exc}") from exc
    raw = mv.tags.get(SCORE_TAG.format(metric=metric))
    if raw is None:
        return str(mv.version), None
    try:
        return str(mv.version), float(raw)
    except ValueError as exc:
        raise ChampionUnreadable(
            f"champion version {mv.version} has {SCORE_TAG.format(metric=metric)}={raw!r}, "
            "not a number") from exc


def evaluation_candidate(evaluation_json: str) -> tuple[str | None, float | None, str]:
    """(candidate 'name/version', its score, metric) from evaluate's StageResult JSON."""
    result = json.loads(evaluation_json)
    metrics = result.get("metrics", {})
    metric = next((k.split("/", 1)[1] for k in metrics if k.startswith("promotion_metric/")),
                  "accuracy")
    return result.get("model_version"), metrics.get("promotion_score"), metric


def raised_flags(evaluation_json: str) -> list[str]:
    """The candidate's monitor flags named in evaluate's metrics (`monitor_flag/<flag>`)."""
    prefix = FLAG_METRIC.format(flag="")
    metrics = json.loads(evaluation_json).get("metrics", {})
    return sorted(k[len(prefix):] for k, v in metrics.items() if k.startswith(prefix) and v)


def gate(evaluation_json: str, min_delta: float) -> PromotionDecision:
    """Whether the evaluated candidate should become champion, and why (fails closed)."""
    candidate, score, metric = evaluation_candidate(evaluation_json)
    if candidate is None or score is None:
        return PromotionDecision(False, "the evaluation names no candidate model or no score")
    flags = raised_flags(evaluation_json)
    if flags:
        return PromotionDecision(False, f"{candidate} raised monitor flags ({', '.join(flags)}): "
                                        "a model whose training was flagged (reward hacking, "
                                        "format collapse, RM-vs-rule gap, hallucination above "
                                        "its threshold) is never promoted; see evaluate's report")
    name = candidate.rsplit("/", 1)[0]
    tag = SCORE_TAG.format(metric=metric)
    decision = _compare(candidate, score, metric, name, tag, min_delta)
    if decision.promote:
        incomplete = _incomplete(candidate)
        if incomplete:
            return PromotionDecision(False, incomplete, decision.champion_version,
                                     decision.champion_score)
    return decision


def _compare(candidate: str, score: float, metric: str, name: str, tag: str,
             min_delta: float) -> PromotionDecision:
    try:
        version, current = champion_score(name, metric)
    except ChampionUnreadable as err:
        return PromotionDecision(False, f"could not read the champion of {name}: {err}; "
                                        "promotion needs a definite answer")
    if version is None:
        return PromotionDecision(True, f"no champion for {name} yet: {candidate} "
                                       f"({metric} {score}) becomes the first")
    if f"{name}/{version}" == candidate:  # e.g. a rerun served from KFP's cache
        return PromotionDecision(False, f"{candidate} ({metric} {score}) is already the "
                                        "champion", version, current, already=True)
    if current is None:
        return PromotionDecision(False, f"the champion of {name} (version {version}) has no {tag} "
                                        "tag, so the candidate cannot be compared with it: "
                                        f"tag it, or move the alias by hand", version)
    if beats(score, current, min_delta):
        return PromotionDecision(True, f"{candidate} ({metric} {score}) beats the champion "
                                       f"version {version} ({current}) by more than {min_delta}",
                                 version, current)
    return PromotionDecision(False, f"{candidate} ({metric} {score}) does not beat the champion "
                                    f"version {version} ({current}) by more than {min_delta}",
                             version, current)


def _incomplete(candidate: str) -> str | None:
    """Why `candidate` may not be promoted because its files were never verified in the store
    (`r1vflow.status=incomplete`), or because that cannot be read; None when it may."""
    from mlflow.exceptions import MlflowException

    name, version = candidate.rsplit("/", 1)
    try:
        status = mlflow_client().get_model_version(name, version).tags.get(STATUS_TAG)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return None  # not in this registry: nothing recorded against it
        return f"could not read {candidate}: {exc.error_code}: {exc.message}"
    except Exception as exc:  # noqa: BLE001 (unknown is not "complete")
        return f"could not read {candidate}: {type(exc).__name__}: {exc}"
    if status == "incomplete":
        return (f"{candidate} is tagged {STATUS_TAG}=incomplete: its files were never "
                "verified in the store")
    return None


def decide(evaluation_json: str, min_delta: float) -> bool:
    """The pipeline's gate: `gate`, its reason printed and recorded on the candidate version."""
    decision = gate(evaluation_json, min_delta)
    print(f"promotion {decision.verdict}: {decision.reason}")
    record_decision(evaluation_json, decision)
    return decision.promote


def record_decision(evaluation_json: str, decision: PromotionDecision) -> bool:
    """Tag the candidate version with the decision's reason; False (with a warning printed)
    when that is not possible, which never changes the decision."""
    candidate, _, _ = evaluation_candidate(evaluation_json)
    if candidate is None:
        return False
    name, version = candidate.rsplit("/", 1)
    try:
        mlflow_client().set_model_version_tag(name, version, DECISION_TAG, decision.reason)
    except Exception as err:  # noqa: BLE001 (the registry may be what failed)
        print(f"warning: could not record the promotion decision on {candidate}: "
              f"{type(err).__name__}: {err}")
        return False
    return True


def promote(evaluation_json: str) -> str:
    """Move `champion` to the candidate; returns 'name/version'."""
    candidate, _, _ = evaluation_candidate(evaluation_json)
    if candidate is None:
        raise ValueError("evaluation names no candidate model to promote")
    name, version = candidate.rsplit("/", 1)
    mlflow_client().set_registered_model_alias(name, CHAMPION, version)
    return candidate
