"""Reward functions: one signature, hand-checked values."""

import pytest

from r1vflow.rl.rewards import (
    REWARDS,
    RewardBreakdown,
    accuracy_reward,
    format_reward,
    get_reward,
    hybrid_reward,
    make_reward_model_reward,
    register_reward,
)

COMPLETIONS = [
    "<think>3 red cubes</think><answer>3</answer>",  # right, formatted
    "<think>hmm</think><answer>4</answer>",  # wrong, formatted
    "the count is 3.0",  # right via fallback, unformatted
    "junk",  # wrong, unformatted
]
ANSWERS = ["3", "3", "3", "3"]


def test_accuracy_reward():
    assert accuracy_reward(COMPLETIONS, ANSWERS) == [1.0, 0.0, 1.0, 0.0]


def test_format_reward():
    assert format_reward(COMPLETIONS, ANSWERS) == [1.0, 1.0, 0.0, 0.0]


def test_rewards_reject_length_mismatch():
    with pytest.raises(ValueError, match="4 completions but 1 answers"):
        accuracy_reward(COMPLETIONS, ["3"])
    with pytest.raises(ValueError, match="format_reward"):
        format_reward(COMPLETIONS, [])


def _length_rm(prompts, completions):
    # a toy RM: prompt length minus completion length, so both inputs visibly matter
    return [len(p) - len(c) for p, c in zip(prompts, completions, strict=True)]


def test_reward_model_reward_passes_prompts():
    rm = make_reward_model_reward(_length_rm)
    assert rm(["ab", "abcd"], ["3", "3"], prompts=["xxxxx", "yy"]) == [3.0, -2.0]


def test_reward_model_reward_needs_prompts_and_matching_scores():
    rm = make_reward_model_reward(_length_rm)
    with pytest.raises(ValueError, match="keyword 'prompts'"):
        rm(["a"], ["3"])
    with pytest.raises(ValueError, match="1 prompts but 2 completions"):
        rm(["a", "b"], ["3", "3"], prompts=["p"])
    short = make_reward_model_reward(lambda prompts, completions: [0.0])
    with pytest.raises(ValueError, match="returned 1 scores for 2"):
        short(["a", "b"], ["3", "3"], prompts=["p", "q"])


def test_hybrid_reward_weights_and_breakdown():
    rm = make_reward_model_reward(lambda prompts, completions: [0.5, -1.0, 2.0, 0.0])
    hybrid = hybrid_reward(
        {"accuracy": accuracy_reward, "format": format_reward, "rm": rm},
        {"accuracy": 1.0, "format": 0.5, "rm": 0.25},
    )
    kw = {"prompts": ["q"] * 4}
    # acc (1, 0, 1, 0), fmt (1, 1, 0, 0), rm (0.5, -1, 2, 0)
    expected = [1 + 0.5 + 0.125, 0 + 0.5 - 0.25, 1 + 0 + 0.5, 0.0]
    assert hybrid(COMPLETIONS, ANSWERS, **kw) == pytest.approx(expected)
    bd = hybrid.breakdown(COMPLETIONS, ANSWERS, **kw)
    assert isinstance(bd, RewardBreakdown)
    assert bd.total == pytest.approx(expected)
    assert bd.components == {
        "accuracy": [1.0, 0.0, 1.0, 0.0],
        "format": [1.0, 1.0, 0.0, 0.0],
        "rm": [0.5, -1.0, 2.0, 0.0],
    }


def test_hybrid_reward_validates_names():
    with pytest.raises(ValueError, match="one weight per reward function"):
        hybrid_reward({"accuracy": accuracy_reward}, {"accuracy": 1.0, "format": 1.0})
    with pytest.raises(ValueError, match="no reward functions"):
        hybrid_reward({}, {})
    bad = hybrid_reward({"bad": lambda c, a, **kw: [1.0]}, {"bad": 1.0})
    with pytest.raises(ValueError, match="component 'bad' returned 1 values for 4"):
        bad(COMPLETIONS, ANSWERS)


def test_registry():
    assert REWARDS == {"accuracy": accuracy_reward, "format": format_reward}
    assert get_reward("format") is format_reward
    with pytest.raises(KeyError, match="unknown reward 'nope'"):
        get_reward("nope")
    with pytest.raises(ValueError, match="'accuracy' is already registered"):
        register_reward("accuracy", format_reward)
