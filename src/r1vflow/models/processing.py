"""Prompt construction and batch encoding for the chat-formatted VLM.

One user turn holds `n_image_tokens` `<image>` placeholders, a newline and the question; the
assistant turn holds the response (`<think>...</think><answer>...</answer>`) closed by
`<|im_end|>`. SFT batches are right-padded with labels on the response only; generation
batches are left-padded so every prompt ends where generation starts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from r1vflow.models.tokenizer import IMAGE_TOKEN

IGNORE_INDEX = -100
# What stands for an image in a prompt: n `<image>` tokens (the tiny Llava path) or the image's
# own placeholder text (an ImageInput's, r1vflow.models.families.images); one per sample, or
# one for all samples.
ImageText = int | str


def _per_sample(image: ImageText | Sequence[ImageText], n: int) -> list[ImageText]:
    if isinstance(image, (int, str)):
        return [image] * n
    if len(image) != n:
        raise ValueError(f"{n} samples but {len(image)} image placeholders")
    return list(image)


def build_prompt(tokenizer: PreTrainedTokenizerBase, question: str,
                 n_image_tokens: ImageText) -> str:
    """Chat-template text of one user turn (image placeholders + question) + assistant header.

    n_image_tokens: an int n writes n `<image>` tokens; a string is the image's placeholder
    text as its family writes it (e.g. `<|vision_start|><|image_pad|>...<|vision_end|>`)."""
    image = IMAGE_TOKEN * n_image_tokens if isinstance(n_image_tokens, int) else n_image_tokens
    content = image + "\n" + question
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def encode_sft_example(
    tokenizer: PreTrainedTokenizerBase, question: str, response: str, n_image_tokens: ImageText
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one example; labels are -100 on the prompt, ids on response + eos."""
    prompt = _ids(tokenizer, build_prompt(tokenizer, question, n_image_tokens))
    answer = _ids(tokenizer, response) + [tokenizer.eos_token_id]
    return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer


def encode_sft_batch(
    tokenizer: PreTrainedTokenizerBase,
    samples: list[tuple[str, str]],
    n_image_tokens: ImageText | Sequence[ImageText],
    max_length: int,
) -> dict[str, torch.Tensor]:
    """Encode (question, response) pairs for teacher-forced training, right-padded.

    Returns input_ids, attention_mask, labels, each [B, T] with T = the longest example (at most
    `max_length`). Too-long examples lose the end of the response; an example whose prompt alone
    exceeds `max_length` raises ValueError, since cutting `<image>` tokens would break the model.
    """
    rows: list[tuple[list[int], list[int]]] = []
    images = _per_sample(n_image_tokens, len(samples))
    for index, (question, response) in enumerate(samples):
        ids, labels = encode_sft_example(tokenizer, question, response, images[index])
        n_prompt = labels.count(IGNORE_INDEX)
        if n_prompt >= max_length:
            raise ValueError(
                f"sample {index}: prompt is {n_prompt} tokens, max_length={max_length} leaves no "
                "room for the response; raise max_length"
            )
        rows.append((ids[:max_length], labels[:max_length]))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, questions: list[str],
    n_image_tokens: ImageText | Sequence[ImageText],
) -> dict[str, torch.Tensor]:
    """Left-padded prompt batch for generation: input_ids and attention_mask, both [B, T]."""
    images = _per_sample(n_image_tokens, len(questions))
    encoded = [_ids(tokenizer, build_prompt(tokenizer, q, image))
               for q, image in zip(questions, images, strict=True)]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention}
