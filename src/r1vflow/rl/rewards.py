"""Reward functions for GRPO (R1V2 hybrid reward: r = r_rule + r_RM + r_format).

Every reward function is a plain callable with one signature::

    fn(completions: list[str], answers: list[str], **kw) -> list[float]

one float per completion; ``answers[i]`` is the gold answer for ``completions[i]``. Extra
context (e.g. ``prompts`` for a reward model) arrives through keyword arguments, which
functions that do not need it ignore.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from r1vflow.eval.grading import extract_answer, format_ok, is_correct

__all__ = [
    "REWARDS",
    "HybridReward",
    "RewardBreakdown",
    "RewardFn",
    "accuracy_reward",
    "format_reward",
    "get_reward",
    "hybrid_reward",
    "make_reward_model_reward",
    "register_reward",
]

RewardFn = Callable[..., list[float]]


def _check_lengths(name: str, completions: list[str], answers: list[str]) -> None:
    if len(completions) != len(answers):
        raise ValueError(
            f"{name}: {len(completions)} completions but {len(answers)} answers; "
            "pass one gold answer per completion"
        )


def accuracy_reward(completions: list[str], answers: list[str], **kw) -> list[float]:
    """1.0 if the extracted answer of a completion is correct, else 0.0."""
    _check_lengths("accuracy_reward", completions, answers)
    return [
        1.0 if is_correct(extract_answer(c), a) else 0.0
        for c, a in zip(completions, answers, strict=True)
    ]


def format_reward(completions: list[str], answers: list[str], **kw) -> list[float]:
    """1.0 if a completion is exactly <think>...</think><answer>...</answer>, else 0.0."""
    _check_lengths("format_reward", completions, answers)
    return [1.0 if format_ok(c) else 0.0 for c in completions]


def make_reward_model_reward(
    score_fn: Callable[[list[str], list[str]], list[float]],
) -> RewardFn:
    """Wrap a batched reward-model scorer ``score_fn(prompts, completions) -> scores`` as a
    reward function; the prompts come in through the keyword argument ``prompts``."""

    def reward_model_reward(completions: list[str], answers: list[str], **kw) -> list[float]:
        _check_lengths("reward_model_reward", completions, answers)
        prompts = kw.get("prompts")
        if prompts is None:
            raise ValueError("reward_model_reward: pass the prompts as keyword 'prompts'")
        if len(prompts) != len(completions):
            raise ValueError(
                f"reward_model_reward: {len(prompts)} prompts but {len(completions)} completions"
            )
        scores = [float(s) for s in score_fn(list(prompts), list(completions))]
        if len(scores) != len(completions):
            raise ValueError(
                f"reward_model_reward: score_fn returned {len(scores)} scores for "
                f"{len(completions)} completions"
            )
        return scores

    return reward_model_reward


@dataclass(frozen=True)
class RewardBreakdown:
    """Weighted total per completion and the unweighted value of each component."""

    total: list[float]
    components: dict[str, list[float]]


class HybridReward:
    """Weighted sum of reward functions: total_i = sum_k weights[k] * fns[k](...)_i.

    Calling it returns the totals (the common reward signature); ``breakdown`` also returns
    each component's unweighted values, for logging (e.g. RM score rising while accuracy does
    not is a reward-hacking signal).
    """

    def __init__(self, fns: dict[str, RewardFn], weights: dict[str, float]):
        if not fns:
            raise ValueError("hybrid_reward: no reward functions given")
        if set(fns) != set(weights):
            raise ValueError(
                f"hybrid_reward: reward names {sorted(fns)} and weight names {sorted(weights)} "
                "differ; give exactly one weight per reward function"
            )
        self.fns = dict(fns)
        self.weights = {k: float(v) for k, v in weights.items()}

    def breakdown(self, completions: list[str], answers: list[str], **kw) -> RewardBreakdown:
        """Evaluate every component once and combine them."""
        components: dict[str, list[float]] = {}
        for name, fn in self.fns.items():
            values = [float(v) for v in fn(completions, answers, **kw)]
            if len(values) != len(completions):
                raise ValueError(
                    f"hybrid_reward: component {name!r} returned {len(values)} values for "
                    f"{len(completions)} completions"
                )
            components[name] = values
        total = [
            sum(self.weights[name] * components[name][i] for name in self.fns)
            for i in range(len(completions))
        ]
        return RewardBreakdown(total=total, components=components)

    def __call__(self, completions: list[str], answers: list[str], **kw) -> list[float]:
        return self.breakdown(completions, answers, **kw).total


def hybrid_reward(fns: dict[str, RewardFn], weights: dict[str, float]) -> HybridReward:
    """Combine named reward functions with per-name weights (see ``HybridReward``)."""
    return HybridReward(fns, weights)


REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str, fn: RewardFn) -> RewardFn:
    """Add ``fn`` to ``REWARDS`` under ``name``; a name can be registered only once."""
    if name in REWARDS:
        raise ValueError(f"reward {name!r} is already registered ({REWARDS[name].__name__})")
    REWARDS[name] = fn
    return fn


def get_reward(name: str) -> RewardFn:
    """Look up a registered reward function by name."""
    try:
        return REWARDS[name]
    except KeyError:
        raise KeyError(f"unknown reward {name!r}; registered: {sorted(REWARDS)}") from None


register_reward("accuracy", accuracy_reward)
register_reward("format", format_reward)
