"""R1V stage 2, iterative SFT with reward-model filtering: the data rules.

    iteration 0:    train M0 on all of D
    iteration t>=1: D_t = {(x, y) in D : RM(x, y) >= tau_t}  union  E_{t-1}
                    E_{t-1} = the train samples M_{t-1} answers wrongly (with their gold responses)

D is a pool of (question, image, response) items: every train sample with its gold response,
plus, since the synthetic responses are all correct, `noisy_fraction` x |train| rejected
responses of train preference pairs (wrong answers, misread scenes, broken format, reasoning that
contradicts its answer). So D is of mixed quality, as the report's is, and the reward model's
0..5 score has something to filter: rising tau removes the noisy items first, then the gold
items the reward model is least sure of. The scores are computed once, so the filtered part
|{score >= tau_t}| cannot grow with tau.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from r1vflow.data.schema import PreferencePair, Sample
from r1vflow.eval.grading import extract_answer, is_correct


@dataclass(frozen=True)
class PoolItem:
    """One item of D: a question about an image with a response, gold or noisy."""

    question: str
    response: str
    image: str  # relative to the data set directory
    gold: bool  # the sample's reference response (False: a rejected response of a pair)
    source: str  # sample id (gold) or pair id (noisy)


def build_pool(
    train: Sequence[Sample], pairs: Sequence[PreferencePair], noisy_fraction: float, seed: int
) -> list[PoolItem]:
    """D: the gold items of `train` (in order), then round(noisy_fraction * len(train)) rejected
    responses drawn without replacement (seeded) from the train-split `pairs`.

    Raises ValueError when fewer train pairs exist than noisy items are asked for.
    """
    pool = [PoolItem(s.question, s.response(), s.image, True, s.id) for s in train]
    wanted = round(noisy_fraction * len(train))
    candidates = [p for p in pairs if p.split == "train"]
    if wanted > len(candidates):
        raise ValueError(
            f"sft.iterative.noisy_fraction={noisy_fraction} asks for {wanted} noisy "
            f"responses but the data set has {len(candidates)} train preference "
            "pairs; lower it or raise synthesize_data.num_preference_pairs"
        )
    chosen = random.Random(f"r1vflow-noisy:{seed}").sample(candidates, wanted)
    pool += [PoolItem(p.question, p.rejected, p.image, False, p.id) for p in chosen]
    return pool


def select_iteration(
    scores: Sequence[float], tau: float, error_indices: Iterable[int]
) -> tuple[list[int], int]:
    """Indices into D of D_t = {i : scores[i] >= tau} union error_indices, sorted, and the size
    of the filtered part alone (before E is added)."""
    kept = {i for i, score in enumerate(scores) if score >= tau}
    errors = set(error_indices)
    outside = [i for i in errors if not 0 <= i < len(scores)]
    if outside:
        raise ValueError(f"error indices {sorted(outside)[:5]} are outside D (size {len(scores)})")
    return sorted(kept | errors), len(kept)


def wrong_indices(golds: Sequence[str], responses: Sequence[str]) -> list[int]:
    """Positions whose response's extracted answer does not match the gold answer."""
    if len(golds) != len(responses):
        raise ValueError(f"{len(golds)} gold answers but {len(responses)} responses")
    return [
        i
        for i, (gold, text) in enumerate(zip(golds, responses, strict=True))
        if not is_correct(extract_answer(text), gold)
    ]


def scan_subset(n: int, limit: int | None, seed: int) -> list[int]:
    """Sorted indices of a seeded random subset of range(n) of size min(n, limit) (all: None)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(f"r1vflow-scan:{seed}").sample(range(n), limit))


def answered_wrongly(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[Sample],
    pixel_values: torch.Tensor,
    max_new_tokens: int,
    batch_size: int,
) -> list[int]:
    """Positions in `samples` (images [N,3,H,W]) that `model` answers wrongly, greedily."""
    from r1vflow.models.generate import generate_completions

    groups = generate_completions(
        model, tokenizer, [s.question for s in samples], pixel_values, max_new_tokens, batch_size
    )
    return wrong_indices([s.answer for s in samples], [g[0].text for g in groups])
