"""Batched generation with the KV cache: the transformers rollout backend.

Used by evaluation (greedy), by AL-CoTD self-distillation (with a repetition penalty) and by GRPO
(sampled groups of `num_return_sequences` responses per prompt). Prompts are left-padded so that
every row continues from its own last token; completions stop at `<|im_end|>`. The `<image>` and
`<pad>` ids are never generated, so a prompt + completion can be fed back with its image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from r1vflow.models.families.images import (
    ImageBatch,
    Images,
    image_kwargs,
    image_texts,
    repeat_each,
    token_type_kwargs,
)
from r1vflow.models.processing import encode_prompts
from r1vflow.models.vlm import num_image_tokens


@dataclass(frozen=True)
class Completion:
    """One generated response: decoded text (tags kept), its token ids, and whether it hit eos."""

    text: str
    token_ids: list[int]
    finished: bool

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def trim_completion(row: Sequence[int], eos_id: int, pad_id: int) -> tuple[list[int], bool]:
    """Cut a generated row after its first eos (kept) -> (ids, True); without eos drop the
    trailing padding -> (ids, False)."""
    row = list(row)
    if eos_id in row:
        return row[: row.index(eos_id) + 1], True
    while row and row[-1] == pad_id:
        row.pop()
    return row, False


def decode_completion(tokenizer: PreTrainedTokenizerBase, row: Sequence[int]) -> Completion:
    """A generated row (prompt removed) as a Completion: trimmed ids, text with the reasoning
    tags kept (control tokens dropped)."""
    ids, finished = trim_completion(row, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return Completion(text=tokenizer.decode(ids, skip_special_tokens=True), token_ids=ids,
                      finished=finished)


def sampling_options(temperature: float) -> dict:
    """`generate` options: greedy at temperature 0, else plain temperature sampling (no top-k,
    no top-p), as evaluation and the GRPO rollouts both use."""
    if temperature > 0:
        return {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    return {"do_sample": False}


def _generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    pixel_values: Images,
    options: dict,
) -> list[list[Completion]]:
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    fixed = None if isinstance(pixel_values, ImageBatch) else num_image_tokens(model)
    n, n_prompts = options["num_return_sequences"], len(questions)
    if isinstance(pixel_values, ImageBatch) and n > 1:  # tiles / patches: expand here
        questions = [q for q in questions for _ in range(n)]
        pixel_values = repeat_each(pixel_values, n)
        options = {**options, "num_return_sequences": 1}
    batch = encode_prompts(tokenizer, questions, image_texts(pixel_values, fixed))
    width = batch["input_ids"].shape[1]
    sequences = model.generate(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        **image_kwargs(pixel_values, device, dtype),
        **token_type_kwargs(model, batch["input_ids"].to(device)),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        suppress_tokens=[model.config.image_token_id, tokenizer.pad_token_id],
        use_cache=True,
        **options,
    )
    grouped: list[list[Completion]] = [[] for _ in range(n_prompts)]
    for index, row in enumerate(sequences[:, width:].tolist()):
        grouped[index // n].append(decode_completion(tokenizer, row))
    return grouped


def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    pixel_values: torch.Tensor,
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
    num_return_sequences: int = 1,
    seed: int | None = None,
    repetition_penalty: float = 1.0,
) -> list[list[Completion]]:
    """Generate `num_return_sequences` completions per question; pixel_values is [B,3,H,W].

    Greedy when temperature == 0 (then num_return_sequences must be 1: copies would be equal),
    else plain temperature sampling (no top-k / top-p), reproducible given `seed` without
    touching the global RNG. Returns B lists of Completion.
    """
    if len(questions) != len(pixel_values):
        raise ValueError(f"{len(questions)} questions but {len(pixel_values)} images")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0 and num_return_sequences != 1:
        raise ValueError("greedy decoding (temperature=0) gives identical copies; use n=1")
    options: dict = {
        "max_new_tokens": max_new_tokens,
        "num_return_sequences": num_return_sequences,
        "repetition_penalty": repetition_penalty,
        **sampling_options(temperature),
    }
    was_training = model.training
    model.eval()
    results: list[list[Completion]] = []
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(questions), batch_size):
                stop = start + batch_size
                results += _generate_batch(
                    model, tokenizer, questions[start:stop], pixel_values[start:stop], options
                )
    finally:
        model.train(was_training)
    return results


def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    pixel_values: torch.Tensor,
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
    num_return_sequences: int = 1,
    seed: int | None = None,
) -> list[list[str]]:
    """Texts only of `generate_completions` (same arguments): B lists of n strings."""
    groups = generate_completions(
        model,
        tokenizer,
        questions,
        pixel_values,
        max_new_tokens,
        batch_size,
        temperature=temperature,
        num_return_sequences=num_return_sequences,
        seed=seed,
    )
    return [[c.text for c in group] for group in groups]
