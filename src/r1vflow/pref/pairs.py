"""Preference pairs the R1V2 way: sample several responses per prompt from the current model,
check each with rules (and the reward model when there is one), pair a good one with a bad one.

Rules (pure functions of a response and the gold answer), in the order a rejected response is
attributed to the first one it fails:

    answer_correct  the extracted answer equals the gold answer
    format          exactly <think>...</think><answer>...</answer>
    steps           the reasoning has at least `min_steps` steps (sentences)
    consistency     the reasoning's last number or choice word equals the given answer
                    (the answer follows from the reasoning)

Pairing per prompt (`pair_group`): the chosen response passes every rule (highest reward-model
score first, then shortest); the rejected one fails at least `rule_margin` rules, or, when
every response passes, is the lowest-scored one if the reward-model scores differ by at least
`rm_margin` (rule "reward_model"). A prompt with no passing response takes the gold reference
response as chosen when `gold_chosen` is set (rule of the rejected one as above, recorded with
the prefix "gold/"), else it is dropped ("no_chosen"); a prompt with nothing to reject is
dropped as "no_rejected". Report: `PairReport.by_rule` and `.dropped`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from r1vflow.eval.grading import extract_answer, format_ok, is_correct

__all__ = ["RULES", "Candidate", "PairReport", "RawPair", "check_rules", "pair_group",
           "reasoning_steps"]

RULES = ("answer_correct", "format", "steps", "consistency")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def _reasoning(text: str) -> str:
    found = _THINK.findall(text)
    return found[-1] if found else ""


def reasoning_steps(text: str) -> int:
    """Number of steps (non-empty sentences ending with '.', or a last unterminated one) in the
    response's <think> block; 0 without one."""
    return len([s for s in re.split(r"\.(?:\s+|$)", _reasoning(text).strip()) if s.strip()])


def check_rules(response: str, gold: str, min_steps: int) -> dict[str, bool]:
    """Which of `RULES` the response passes."""
    answer = extract_answer(response) if "<answer>" in response else None
    reasoning = _reasoning(response)
    concluded = extract_answer(reasoning) if reasoning else None
    return {
        "answer_correct": is_correct(answer, gold),
        "format": format_ok(response),
        "steps": reasoning_steps(response) >= min_steps,
        "consistency": answer is not None and is_correct(concluded, answer),
    }


@dataclass(frozen=True)
class Candidate:
    """A sampled response with its rule results and reward-model score (None: no RM)."""

    text: str
    rules: dict[str, bool]
    rm: float | None = None

    @property
    def passes(self) -> bool:
        return all(self.rules.values())

    @property
    def failed(self) -> list[str]:
        return [name for name in RULES if not self.rules[name]]


@dataclass(frozen=True)
class RawPair:
    chosen: str
    rejected: str
    rule: str  # the rule the rejected response failed first, "reward_model", or "gold/<rule>"


@dataclass
class PairReport:
    by_rule: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)

    def metrics(self) -> dict[str, float]:
        out = {f"pairs/{k.replace('/', '_')}": float(v) for k, v in self.by_rule.items()}
        out.update({f"dropped/{k}": float(v) for k, v in self.dropped.items()})
        out["pairs/total"] = float(sum(self.by_rule.values()))
        out["dropped/total"] = float(sum(self.dropped.values()))
        return out


def _rank(c: Candidate) -> tuple:
    return (-(c.rm if c.rm is not None else 0.0), len(c.text))


def _rejected(pool: Sequence[Candidate], chosen: Candidate, rule_margin: int,
              rm_margin: float) -> tuple[Candidate, str] | None:
    failing = [c for c in pool if len(c.failed) >= rule_margin and c.text != chosen.text]
    if failing:  # the worst by rules, then by RM score
        worst = max(failing, key=lambda c: (len(c.failed), -(c.rm or 0.0)))
        return worst, worst.failed[0]
    scored = [c for c in pool if c.rm is not None and c.text != chosen.text]
    if chosen.rm is not None and scored:
        low = min(scored, key=lambda c: c.rm)
        if chosen.rm - low.rm >= rm_margin:
            return low, "reward_model"
    return None


def pair_group(candidates: Sequence[Candidate], gold_response: str | None, rule_margin: int,
               rm_margin: float, report: PairReport) -> RawPair | None:
    """At most one pair from one prompt's sampled responses (module docstring); counts it (or
    why none was made) in `report`."""
    if rule_margin < 1:
        raise ValueError(f"rule_margin must be >= 1 (rules a rejected response fails), "
                         f"got {rule_margin}")
    passing = sorted((c for c in candidates if c.passes), key=_rank)
    prefix = ""
    if passing:
        chosen = passing[0]
    elif gold_response is not None:
        chosen, prefix = Candidate(gold_response, dict.fromkeys(RULES, True)), "gold/"
    else:
        report.dropped["no_chosen"] += 1
        return None
    picked = _rejected(candidates, chosen, rule_margin, rm_margin)
    if picked is None:
        report.dropped["no_rejected"] += 1
        return None
    rejected, rule = picked
    report.by_rule[prefix + rule] += 1
    return RawPair(chosen.text, rejected.text, prefix + rule)
