"""AL-CoTD (R1V): adaptive-length chain-of-thought distillation, the scores and the controller.

QDAM scores each sample's vision side S_v (image clarity, whether the image is needed) and text
side S_t (question quality, difficulty, reasoning demand); VTIA its integration S_I (why/how
questions and multi-object spatial references high, what/where look-ups low); all in [0, 1],
higher = more demanding. DRLC turns them into the generation's repetition penalty

    P = min(2, exp(alpha * (1 - (S_v + beta*S_t + gamma*S_I) / (1 + beta + gamma))))

so harder, more integrated questions get a lower penalty and longer chains. The report gives no
alpha, beta, gamma (config values here).

Scorers are plain callables with one signature, ``fn(samples: list[Sample]) -> list[float]``,
chosen by name in config (`SCORERS` for the rule-based ones; `question_only_probe` and
`judge_scorer` are built around a model). The rule-based ones read the question and the
synthetic scene (`Sample.meta`), which is what the synthetic families make available.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from r1vflow.data.schema import Sample

__all__ = ["SCORERS", "Scorer", "combined_difficulty", "difficulty_buckets", "integration_rule",
           "length_penalty", "spearman", "text_rule", "vision_rule"]

Scorer = Callable[[list[Sample]], list[float]]
MAX_PENALTY = 2.0


def length_penalty(s_v: float, s_t: float, s_i: float, alpha: float, beta: float,
                   gamma: float) -> float:
    """DRLC's repetition penalty P (module docstring); scores in [0, 1]."""
    for name, value in (("S_v", s_v), ("S_t", s_t), ("S_I", s_i)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"length_penalty: {name} must be in [0, 1], got {value}")
    if beta < 0 or gamma < 0:
        raise ValueError(f"length_penalty: beta ({beta}) and gamma ({gamma}) must be >= 0")
    return min(MAX_PENALTY, math.exp(alpha * (1.0 - combined_difficulty(s_v, s_t, s_i, beta,
                                                                         gamma))))


def combined_difficulty(s_v: float, s_t: float, s_i: float, beta: float, gamma: float) -> float:
    """(S_v + beta*S_t + gamma*S_I) / (1 + beta + gamma): the score P is computed from."""
    return (s_v + beta * s_t + gamma * s_i) / (1.0 + beta + gamma)


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def vision_rule(samples: list[Sample]) -> list[float]:
    """S_v from the scene: every synthetic question needs its image (necessity 1); the visual
    load is the number of objects to read (crowded scenes are harder to see), handwritten
    digits counting as a hard read. S_v = 0.5 * necessity + 0.5 * load."""
    out = []
    for s in samples:
        objects = s.meta.get("objects", [])
        load = 0.75 if any("digit" in o for o in objects) else _clip(len(objects) / 8)
        out.append(0.5 + 0.5 * load)
    return out


def text_rule(samples: list[Sample]) -> list[float]:
    """S_t from the reasoning the question demands: the reference chain's steps (sentences),
    6 or more scoring 1, plus 0.2 for an operation word (minus, than, more)."""
    out = []
    for s in samples:
        steps = len([p for p in re.split(r"\.(?:\s+|$)", s.reasoning) if p.strip()])
        operation = 0.2 if re.search(r"\b(minus|than|more)\b", s.question) else 0.0
        out.append(_clip(steps / 6 + operation))
    return out


_HOW_WHY = re.compile(r"^\s*(how|why)\b", re.IGNORECASE)
_SPATIAL = re.compile(r"\b(left|right|side|above|below|than|between|more)\b", re.IGNORECASE)


def integration_rule(samples: list[Sample]) -> list[float]:
    """S_I (VTIA): how/why questions 0.5, what/where/which look-ups 0.2; +0.2 per spatial or
    comparative reference (left, right, side, than, more, ...), +0.1 per object the scene
    holds beyond one (multi-object references), clipped to 1."""
    out = []
    for s in samples:
        base = 0.5 if _HOW_WHY.search(s.question) else 0.2
        spatial = 0.2 * len(_SPATIAL.findall(s.question))
        objects = max(0, len(s.meta.get("objects", [])) - 1)
        out.append(_clip(base + spatial + 0.1 * objects))
    return out


SCORERS: dict[str, Scorer] = {"vision_rule": vision_rule, "text_rule": text_rule,
                              "integration_rule": integration_rule}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant or
    there are fewer than 2 points."""
    from scipy.stats import spearmanr

    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values but {len(y)} y values")
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def difficulty_buckets(values: Sequence[float], n: int = 3) -> list[int]:
    """Bucket of each value, 0 (easiest) .. n-1, by rank (equal-count buckets; ties keep their
    order of appearance)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0] * len(values)
    for rank, i in enumerate(order):
        out[i] = min(n - 1, rank * n // max(1, len(values)))
    return out
