"""MPO's training pairs: sampled from the current model (`sample_pairs`) or taken from a data
set's preference file (`synthetic_pairs`), then tokenized (`encode_items`).

A row is (question, image path, chosen, rejected, rule); `encode_items` turns rows into
`PrefItem`s: the chat prompt with `<image>` placeholders, each response's tokens plus eos.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from r1vflow.data.schema import PreferencePair, Sample
from r1vflow.models.families.images import ImageBatch, Images, image_texts, repeat_each
from r1vflow.models.generate import generate_completions
from r1vflow.pref.pairs import Candidate, PairReport, check_rules, pair_group
from r1vflow.pref.train import PrefItem
from r1vflow.rl.batch import encode_vlm_prompts

__all__ = ["PairRow", "SamplingSettings", "encode_items", "sample_pairs", "synthetic_pairs"]

# rm(questions, images ([N,3,H,W] or an ImageBatch of N), responses) -> scores on 0..1
RMScore = Callable[[list[str], Images, list[str]], list[float]]


@dataclass(frozen=True)
class PairRow:
    id: str
    question: str
    image: str  # relative to the data set directory
    chosen: str
    rejected: str
    rule: str


@dataclass(frozen=True)
class SamplingSettings:
    samples_per_prompt: int
    temperature: float
    max_new_tokens: int
    batch_size: int
    min_steps: int
    rule_margin: int
    rm_margin: float
    gold_chosen: bool
    seed: int


def sample_pairs(model, tokenizer: PreTrainedTokenizerBase, samples: Sequence[Sample],
                 pixels: Images, settings: SamplingSettings,
                 rm: RMScore | None = None) -> tuple[list[PairRow], PairReport]:
    """Sample `samples_per_prompt` responses per sample (images [N,3,H,W] or an ImageBatch of
    N, as `sample_pixels` gives them for the model), check the rules,
    score with `rm` when given, and pair them (`pair_group`). Returns rows and the report."""
    k = settings.samples_per_prompt
    groups = generate_completions(
        model, tokenizer, [s.question for s in samples], pixels, settings.max_new_tokens,
        settings.batch_size, temperature=settings.temperature, num_return_sequences=k,
        seed=settings.seed)
    scores: list[float | None] = [None] * (len(samples) * k)
    if rm is not None:
        texts = [c.text for g in groups for c in g]
        questions = [s.question for s in samples for _ in range(k)]
        scores = list(rm(questions, repeat_each(pixels, k), texts))
    report, rows = PairReport(), []
    for i, (sample, group) in enumerate(zip(samples, groups, strict=True)):
        candidates = [Candidate(c.text, check_rules(c.text, sample.answer, settings.min_steps),
                                scores[i * k + j]) for j, c in enumerate(group)]
        gold = sample.response() if settings.gold_chosen else None
        pair = pair_group(candidates, gold, settings.rule_margin, settings.rm_margin, report)
        if pair is not None:
            rows.append(PairRow(sample.id, sample.question, sample.image, pair.chosen,
                                pair.rejected, pair.rule))
    return rows, report


def synthetic_pairs(pairs: Sequence[PreferencePair], report: PairReport) -> list[PairRow]:
    """The train-split pairs of a preference file, rule "synthetic/<kind>" (counted)."""
    rows = []
    for p in pairs:
        if p.split != "train":
            continue
        report.by_rule[f"synthetic/{p.kind}"] += 1
        rows.append(PairRow(p.id, p.question, p.image, p.chosen, p.rejected,
                            f"synthetic/{p.kind}"))
    return rows


def encode_items(tokenizer: PreTrainedTokenizerBase, rows: Sequence[PairRow],
                 pixels: Images | None, n_image_tokens: int | None,
                 max_length: int) -> list[PrefItem]:
    """PrefItems of `rows` (pixels [N,3,H,W] or an ImageBatch of N in row order, or None for a
    text policy); `n_image_tokens` is the tiny path's fixed count (`fixed_image_tokens`, None
    for a family, whose images carry their own image-token text). A response is cut so
    prompt + response fits `max_length` (its eos kept)."""
    texts = n_image_tokens if pixels is None else image_texts(pixels, n_image_tokens)
    prompts = encode_vlm_prompts(tokenizer, [r.question for r in rows], texts)
    images = pixels.items if isinstance(pixels, ImageBatch) else pixels
    items = []
    for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        room = max_length - len(prompt) - 1
        if room < 1:
            raise ValueError(f"mpo: pair {row.id}'s prompt is {len(prompt)} tokens; "
                             f"mpo.max_length={max_length} leaves no room for a response")
        eos = [tokenizer.eos_token_id]
        chosen = tokenizer.encode(row.chosen, add_special_tokens=False)[:room] + eos
        rejected = tokenizer.encode(row.rejected, add_special_tokens=False)[:room] + eos
        image = None if images is None else images[i]
        items.append(PrefItem(row.id, prompt, chosen, rejected, image, row.rule))
    return items
