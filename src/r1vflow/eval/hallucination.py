"""Visual hallucination on the synthetic families, where the scene's truth is in `Sample.meta`.

A response hallucinates when it names an object or a count the image does not contain:

- an object "<colour> <shape>" (not preceded by a number, which makes it a count) that is not
  in the scene;
- a digit "left/right digit is N" other than the scene's digit on that side;
- a count "N on the left/right" or "N <colour>." (comparison) other than the scene's count;
- counting: a count "N <colour> <shape>(s)" / "N <shape>(s)" / "N objects" whose number is not
  the true count of what the question asks about.

R1V2 reports hallucination rates (SFT 12.1%, MPO 8.7%, MPO+GRPO 9.1%) without defining the
measurement; this is the closest check the synthetic data allows. Samples without a scene
(no `objects` in meta) are not counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from r1vflow.data.families import COLOURS, SHAPES
from r1vflow.data.schema import Sample

__all__ = ["hallucinated", "hallucination_rate"]

_COLOUR = "|".join(COLOURS)
_SHAPE = "|".join(SHAPES)
_OBJECT = re.compile(rf"(?<![\d] )\b({_COLOUR}) ({_SHAPE})\b")
_DIGIT = re.compile(r"\b(left|right) digit is (-?\d+)")
_SIDE_COUNT = re.compile(r"\b(\d+) on the (left|right)\b")
_COLOUR_COUNT = re.compile(rf"\b(\d+) ({_COLOUR})\.")
_COUNT_CLAIM = re.compile(rf"\b(\d+) (?:(?:{_COLOUR}) )?(?:(?:{_SHAPE})s?|objects?)\b")


def _counting_truth(meta: dict) -> int:
    return sum(1 for o in meta["objects"]
               if meta.get("colour") in (None, o.get("colour"))
               and meta.get("shape") in (None, o.get("shape")))


def hallucinated(response: str, sample: Sample) -> bool | None:
    """Whether `response` names an object or count that `sample`'s scene lacks; None when the
    sample has no scene to check against."""
    meta = sample.meta
    objects = meta.get("objects")
    if not objects:
        return None
    present = {(o.get("colour"), o.get("shape")) for o in objects}
    if any(m.groups() not in present for m in _OBJECT.finditer(response)):
        return True
    digits = {o["side"]: o["digit"] for o in objects if "digit" in o}
    if any(int(n) != digits.get(side, int(n)) for side, n in _DIGIT.findall(response)):
        return True
    sides = {s: sum(o.get("side") == s for o in objects) for s in ("left", "right")}
    if any(int(n) != sides[side] for n, side in _SIDE_COUNT.findall(response)):
        return True
    if sample.family == "comparison":
        colours = {c: sum(o.get("colour") == c for o in objects) for c in COLOURS}
        if any(int(n) != colours[c] for n, c in _COLOUR_COUNT.findall(response)):
            return True
    if sample.family == "counting":
        truth = _counting_truth(meta)
        if any(int(n) != truth for n in _COUNT_CLAIM.findall(response)):
            return True
    return False


def hallucination_rate(samples: Sequence[Sample], responses: Sequence[str]) -> float | None:
    """Share of checkable responses that hallucinate (responses[i] answers samples[i]); None
    when no sample has a scene."""
    if len(samples) != len(responses):
        raise ValueError(f"{len(samples)} samples but {len(responses)} responses")
    verdicts = [hallucinated(r, s) for s, r in zip(samples, responses, strict=True)]
    checked = [v for v in verdicts if v is not None]
    return sum(checked) / len(checked) if checked else None
