"""Padded GRPO training batches and the log-probabilities of their completions.

A row is a prompt (left-padded, as `generate` saw it) followed by its completion
(right-padded); positions count real tokens from 0 so the training forward matches the
rollout's token for token. Shapes: N rows, W prompt width, T completion width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from r1vflow.models.families.images import Images, image_kwargs, token_type_kwargs
from r1vflow.models.processing import ImageText, build_prompt
from r1vflow.rl.core import Aggregation, token_logprobs
from r1vflow.rl.rollout import left_pad

__all__ = ["completion_logprobs", "encode_vlm_prompts", "loss_scale", "sequence_batch"]


def encode_vlm_prompts(
    tokenizer: PreTrainedTokenizerBase, questions: Sequence[str],
    n_image_tokens: ImageText | Sequence[ImageText],
) -> list[list[int]]:
    """Token ids of the chat prompt of each question (as `encode_prompts`, unpadded);
    n_image_tokens: one for all questions or one per question (see build_prompt)."""
    images = ([n_image_tokens] * len(questions) if isinstance(n_image_tokens, (int, str))
              else list(n_image_tokens))
    return [
        tokenizer.encode(build_prompt(tokenizer, q, image), add_special_tokens=False)
        for q, image in zip(questions, images, strict=True)
    ]


def sequence_batch(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Prompt (left-padded to W) + completion (right-padded to T) per row, N rows.

    Returns input_ids, attention_mask, position_ids [N, W+T] (positions count real tokens
    from 0, as `generate` does for left-padded prompts) and completion_ids,
    completion_mask [N, T].
    """
    if len(prompts) != len(completions) or not completions:
        raise ValueError(f"sequence_batch: {len(prompts)} prompts, {len(completions)} completions")
    p_ids, p_mask = left_pad(prompts, pad_id)
    width = max(len(c) for c in completions)
    c_ids = torch.full((len(completions), width), pad_id, dtype=torch.long)
    c_mask = torch.zeros((len(completions), width), dtype=torch.long)
    for i, row in enumerate(completions):
        c_ids[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        c_mask[i, : len(row)] = 1
    mask = torch.cat([p_mask, c_mask], dim=1)
    return {
        "input_ids": torch.cat([p_ids, c_ids], dim=1),
        "attention_mask": mask,
        "position_ids": (mask.cumsum(dim=1) - 1).clamp(min=0),
        "completion_ids": c_ids,
        "completion_mask": c_mask,
    }


def completion_logprobs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], pixel_values: Images | None
) -> torch.Tensor:
    """log pi(completion token | prefix) for a `sequence_batch`: [N, T] float32 (padding
    positions hold values too; mask them with completion_mask). pixel_values: [N,3,H,W] or an
    ImageBatch of N images. Qwen-VL models compute their own 3-D (M-RoPE) positions from the
    attention mask and image grid, as in generate, so they get no position_ids."""
    param = next(model.parameters())
    t = batch["completion_ids"].shape[1]
    kwargs = {k: batch[k].to(param.device) for k in ("input_ids", "attention_mask", "position_ids")}
    if pixel_values is not None:
        kwargs.update(image_kwargs(pixel_values, param.device, param.dtype))
        if "image_grid_thw" in kwargs:
            del kwargs["position_ids"]
        kwargs.update(token_type_kwargs(model, kwargs["input_ids"]))
    logits = model(**kwargs, logits_to_keep=t + 1, use_cache=False).logits[:, :-1]  # [N, T, V]
    return token_logprobs(logits, batch["completion_ids"].to(param.device))


def loss_scale(lengths: Sequence[int], train: Sequence[int], aggregation: Aggregation) -> float:
    """Share of the whole batch's aggregation weight carried by the rows `train`.

    lengths: [N] valid completion tokens per row. The policy loss of rows with zero advantage
    is exactly 0, so loss(batch) = loss_scale * loss(rows `train`) when the others are such
    rows: the share of rows for "seq-mean-token-mean", of tokens for "token-mean".
    """
    if aggregation == "token-mean":
        return sum(lengths[i] for i in train) / sum(lengths)
    return len(train) / len(lengths)
