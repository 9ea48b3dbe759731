"""Promotion: the pure rule, and the candidate/champion aliases on a real MLflow store."""

import json

import mlflow
import pytest

from r1vflow.tracking.promotion import beats, champion_score, decide, mark_candidate, promote


def test_beats_rule():
    assert beats(0.5, None)
    assert beats(0.6, 0.5)
    assert not beats(0.5, 0.5)
    assert not beats(0.55, 0.5, min_delta=0.1)
    assert beats(0.61, 0.5, min_delta=0.1)


@pytest.fixture
def registry(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    client = mlflow.MlflowClient()
    client.create_registered_model("exp-sft")
    for _ in range(3):
        client.create_model_version("exp-sft", source=str(tmp_path))
    return client


def _evaluation(version: str, score: float) -> str:
    return json.dumps({"model_version": version, "metrics": {
        "promotion_score": score, "promotion_metric/accuracy": 1.0, "accuracy/sft": score}})


def test_first_candidate_becomes_champion_then_only_better_ones(registry):
    mark_candidate("exp-sft/1", "accuracy", 0.4)
    assert str(registry.get_model_version_by_alias("exp-sft", "candidate").version) == "1"
    assert champion_score("exp-sft", "accuracy") == (None, None)
    assert decide(_evaluation("exp-sft/1", 0.4), 0.0)
    assert promote(_evaluation("exp-sft/1", 0.4)) == "exp-sft/1"
    assert champion_score("exp-sft", "accuracy") == ("1", 0.4)

    mark_candidate("exp-sft/2", "accuracy", 0.3)  # worse: champion stays
    assert not decide(_evaluation("exp-sft/2", 0.3), 0.0)
    mark_candidate("exp-sft/3", "accuracy", 0.5)  # better: the gate opens
    assert decide(_evaluation("exp-sft/3", 0.5), 0.0)
    assert not decide(_evaluation("exp-sft/3", 0.5), 0.2)  # not by enough
    promote(_evaluation("exp-sft/3", 0.5))
    assert str(registry.get_model_version_by_alias("exp-sft", "champion").version) == "3"
    assert str(registry.get_model_version_by_alias("exp-sft", "candidate").version) == "3"


def test_evaluation_without_candidate_never_promotes(registry):
    assert not decide(json.dumps({"metrics": {}}), 0.0)
    with pytest.raises(ValueError, match="no candidate"):
        promote(json.dumps({"metrics": {}}))


def test_a_flagged_candidate_is_refused_however_good(registry):
    from r1vflow.tracking.promotion import DECISION_TAG, gate

    flagged = json.loads(_evaluation("exp-sft/1", 0.9))
    flagged["metrics"].update({"monitor_flag/grpo/reward_hacking": 1.0,
                               "monitor_flag/hallucination": 1.0})
    decision = gate(json.dumps(flagged), 0.0)  # no champion yet: it would otherwise win
    assert not decision.promote
    assert "raised monitor flags (grpo/reward_hacking, hallucination)" in decision.reason
    assert not decide(json.dumps(flagged), 0.0)
    tags = registry.get_model_version("exp-sft", "1").tags
    assert "raised monitor flags" in tags[DECISION_TAG]
    assert gate(_evaluation("exp-sft/1", 0.9), 0.0).promote  # the same without flags


def test_evaluate_flags_the_candidate(tmp_path):
    from r1vflow.models.io import write_metadata
    from r1vflow.stages.evaluate import candidate_flags

    write_metadata(tmp_path, {"stage": "grpo", "parent": None, "config_fingerprint": "f",
                              "extra": {"monitor_flags": {"mpo/rm_accuracy_gap": "step 3: x"}}})
    metrics = {"hallucination_rate/grpo": 0.2}
    assert candidate_flags(("grpo", tmp_path), metrics, None) == {"mpo/rm_accuracy_gap": "step 3: x"}
    flags = candidate_flags(("grpo", tmp_path), metrics, 0.15)
    assert set(flags) == {"mpo/rm_accuracy_gap", "hallucination"}
    assert "0.200" in flags["hallucination"] and "0.15" in flags["hallucination"]
    assert "hallucination" not in candidate_flags(("grpo", tmp_path), metrics, 0.25)


def test_the_champion_again_is_already_the_champion_in_the_log_and_the_summary(registry, capsys):
    """A rerun served from the cache evaluates the champion itself: the gate's log line and
    summary.json's promotion say the same thing (not promoted; already the champion)."""
    from r1vflow.pipelines.local_run import _promotion
    from r1vflow.tracking.promotion import DECISION_TAG, gate

    mark_candidate("exp-sft/2", "accuracy", 0.4)
    assert decide(_evaluation("exp-sft/2", 0.4), 0.0)
    promote(_evaluation("exp-sft/2", 0.4))
    capsys.readouterr()
    uri = mlflow.get_tracking_uri()
    first = _promotion(uri, {"model_version": "exp-sft/2"}, promoted_now=True)
    assert first["promoted"] and not first["already_champion"]
    assert first["decision"].startswith("no champion for exp-sft yet")

    decision = gate(_evaluation("exp-sft/2", 0.4), 0.0)
    assert (decision.promote, decision.already, decision.verdict) == (False, True, "not needed")
    assert not decide(_evaluation("exp-sft/2", 0.4), 0.0)  # promote does not run again
    logged = capsys.readouterr().out
    assert logged.startswith("promotion not needed: exp-sft/2 (accuracy 0.4) is already the "
                             "champion")
    again = _promotion(uri, {"model_version": "exp-sft/2"}, promoted_now=False)
    assert again == {"candidate": "exp-sft/2", "champion": "exp-sft/2", "promoted": False,
                     "already_champion": True,
                     "decision": registry.get_model_version("exp-sft", "2").tags[DECISION_TAG]}
    assert again["decision"] in logged


def test_a_worse_candidate_is_not_promoted_and_not_the_champion(registry, capsys):
    from r1vflow.pipelines.local_run import _promotion

    mark_candidate("exp-sft/1", "accuracy", 0.5)
    decide(_evaluation("exp-sft/1", 0.5), 0.0)
    promote(_evaluation("exp-sft/1", 0.5))
    mark_candidate("exp-sft/2", "accuracy", 0.3)
    assert not decide(_evaluation("exp-sft/2", 0.3), 0.0)
    assert "promotion blocked: exp-sft/2" in capsys.readouterr().out
    summary = _promotion(mlflow.get_tracking_uri(), {"model_version": "exp-sft/2"}, False)
    assert (summary["promoted"], summary["already_champion"], summary["champion"]) == (
        False, False, "exp-sft/1")
    assert "does not beat the champion version 1" in summary["decision"]
