"""Preference pairs from sampled responses: the rule checks and the pairing under margins."""

import pytest

from r1vflow.pref.pairs import Candidate, PairReport, check_rules, pair_group, reasoning_steps

GOOD = "<think>red circle top-left. red square top-right. 2 red objects.</think><answer>2</answer>"
WRONG = "<think>red circle top-left. 1 red object.</think><answer>1</answer>"
NO_FORMAT = "red circle top-left. red square top-right. 2 red objects. 2"
SHORT = "<think>2 red objects.</think><answer>2</answer>"
CONTRADICTS = "<think>red circle top-left. red square top-right. 3 red objects.</think><answer>2</answer>"


def test_rules_on_each_kind_of_response():
    assert check_rules(GOOD, "2", min_steps=2) == dict.fromkeys(
        ("answer_correct", "format", "steps", "consistency"), True)
    assert check_rules(WRONG, "2", 2) == {"answer_correct": False, "format": True,
                                          "steps": True, "consistency": True}
    assert check_rules(NO_FORMAT, "2", 2) == {"answer_correct": False, "format": False,
                                              "steps": False, "consistency": False}
    assert check_rules(SHORT, "2", 2)["steps"] is False
    assert check_rules(SHORT, "2", 1)["steps"] is True
    assert check_rules(CONTRADICTS, "2", 2) == {"answer_correct": True, "format": True,
                                                "steps": True, "consistency": False}
    assert reasoning_steps(GOOD) == 3 and reasoning_steps(NO_FORMAT) == 0


def _cands(texts, rms=None, gold="2"):
    rms = rms or [None] * len(texts)
    return [Candidate(t, check_rules(t, gold, 2), rm) for t, rm in zip(texts, rms, strict=True)]


def test_rule_pair_attributed_to_first_failed_rule():
    report = PairReport()
    pair = pair_group(_cands([WRONG, GOOD, CONTRADICTS]), None, 1, 0.2, report)
    assert (pair.chosen, pair.rejected, pair.rule) == (GOOD, WRONG, "answer_correct")
    assert report.metrics() == {"pairs/answer_correct": 1.0, "pairs/total": 1.0,
                                "dropped/total": 0.0}


def test_rule_margin_excludes_responses_failing_fewer_rules():
    report = PairReport()
    # CONTRADICTS fails one rule: with rule_margin 2 it is not bad enough to reject
    assert pair_group(_cands([GOOD, CONTRADICTS]), None, 2, 0.2, report) is None
    assert report.dropped["no_rejected"] == 1
    pair = pair_group(_cands([GOOD, CONTRADICTS, NO_FORMAT]), None, 2, 0.2, report)
    assert (pair.rejected, pair.rule) == (NO_FORMAT, "answer_correct")


def test_reward_model_pairs_need_the_margin():
    good2 = GOOD.replace("top-right", "bottom-right")
    report = PairReport()
    pair = pair_group(_cands([GOOD, good2], [0.9, 0.6]), None, 1, 0.2, report)
    assert (pair.chosen, pair.rejected, pair.rule) == (GOOD, good2, "reward_model")
    assert pair_group(_cands([GOOD, good2], [0.9, 0.8]), None, 1, 0.2, report) is None
    assert report.by_rule == {"reward_model": 1} and report.dropped == {"no_rejected": 1}


def test_gold_response_stands_in_when_nothing_passes():
    report = PairReport()
    assert pair_group(_cands([WRONG, NO_FORMAT]), None, 1, 0.2, report) is None
    assert report.dropped == {"no_chosen": 1}
    pair = pair_group(_cands([WRONG, NO_FORMAT]), GOOD, 1, 0.2, report)
    assert (pair.chosen, pair.rejected, pair.rule) == (GOOD, NO_FORMAT, "gold/answer_correct")
    assert report.metrics()["pairs/gold_answer_correct"] == 1.0


def test_rule_margin_must_be_positive():
    with pytest.raises(ValueError, match="rule_margin must be >= 1"):
        pair_group(_cands([GOOD]), None, 0, 0.2, PairReport())
