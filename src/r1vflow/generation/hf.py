"""The transformers backend: `model.generate` on the live policy (batched, KV cache, left
padding), seeded without touching the global RNG. It samples from the model object itself, so
`sync` has nothing to copy."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from r1vflow.generation.base import (
    Completion,
    PromptImages,
    Sampling,
    check_prompts,
    per_prompt_images,
    trim_completion,
)
from r1vflow.models.devices import model_device
from r1vflow.models.families.images import image_kwargs, stack_images, token_type_kwargs


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token rows to one width: (input_ids, attention_mask), both [B, W] long."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("left_pad: every prompt needs at least one token")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids, mask


def sampling_options(sampling: Sampling) -> dict:
    """`generate` options: greedy at temperature 0, else plain temperature sampling (no top-k,
    no top-p); the repetition penalty when it is not 1."""
    options: dict = {"max_new_tokens": sampling.max_new_tokens, "do_sample": False}
    if sampling.temperature > 0:
        options.update(do_sample=True, temperature=sampling.temperature, top_k=0, top_p=1.0)
    if sampling.repetition_penalty != 1.0:
        options["repetition_penalty"] = sampling.repetition_penalty
    return options


def suppressed_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens never generated: the image placeholder (so a prompt + completion can be fed back
    with its images) and padding."""
    image = getattr(model.config, "image_token_id", None)
    return sorted({i for i in (image, tokenizer.pad_token_id) if i is not None})


class TransformersEngine:
    """`model.generate` over the live `model` (a VLM of any family, or a causal LM).

    Args:
        model: sampled as it is at call time (eval mode during the call, restored after).
        tokenizer: eos, pad and decoding.
        batch_size: prompts per `generate` call (each expands to batch_size x n rows).
    """

    backend = "transformers"

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                 batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"TransformersEngine: batch_size must be >= 1, got {batch_size}")
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("TransformersEngine: the tokenizer needs an eos and a pad token")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.suppress = suppressed_ids(model, tokenizer)

    @property
    def config(self):
        """The model's config (what prompts are built for)."""
        return getattr(self.model, "module", self.model).config

    def sync(self, model: torch.nn.Module, names: Iterable[str] | None = None) -> float:
        """Sample from `model` from now on (while training, the same object: nothing to copy)."""
        self.model = model
        return 0.0

    def close(self) -> None:
        pass

    def generate(self, prompt_ids: Sequence[Sequence[int]], images: PromptImages,
                 sampling: Sampling) -> list[list[Completion]]:
        check_prompts(prompt_ids)
        rows = per_prompt_images(images, len(prompt_ids))
        was_training = self.model.training
        self.model.eval()
        groups: list[list[Completion]] = []
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                for start in range(0, len(prompt_ids), self.batch_size):
                    stop = start + self.batch_size
                    chunk = None if rows is None else rows[start:stop]
                    groups += self._chunk(list(prompt_ids[start:stop]), chunk, sampling)
        finally:
            self.model.train(was_training)
        return groups

    def _chunk(self, prompts: list, images: list | None, sampling: Sampling):
        device, dtype = model_device(self.model)
        n = sampling.n
        # One plain image tensor per prompt: generate repeats pixel_values per returned
        # sequence itself. Tiles, patches or several images: expand the rows here.
        native = images is None or all(len(r) == 1 and isinstance(r[0], torch.Tensor)
                                       for r in images)
        if not native and n > 1:
            prompts = [p for p in prompts for _ in range(n)]
            images = [r for r in images for _ in range(n)]
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        kwargs = {"input_ids": ids, "attention_mask": mask,
                  "num_return_sequences": n if native else 1,
                  "pad_token_id": self.tokenizer.pad_token_id,
                  "eos_token_id": self.tokenizer.eos_token_id, "use_cache": True,
                  "suppress_tokens": self.suppress, **sampling_options(sampling)}
        flat = [image for row in images or () for image in row]
        if flat:
            kwargs.update(image_kwargs(stack_images(flat), device, dtype))
            kwargs.update(token_type_kwargs(self.model, ids))
        if sampling.logprobs:
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        out = self.model.generate(**kwargs)
        sequences = out.sequences if sampling.logprobs else out
        new = sequences[:, ids.shape[1]:]
        logprobs = _token_logprobs(out.logits, new) if sampling.logprobs else None
        completions = [self._completion(row, None if logprobs is None else logprobs[i])
                       for i, row in enumerate(new.tolist())]
        return [completions[p * n:(p + 1) * n] for p in range(len(completions) // n)]

    def _completion(self, row: list[int], logprobs: list[float] | None) -> Completion:
        ids, finished = trim_completion(row, self.tokenizer.eos_token_id,
                                        self.tokenizer.pad_token_id)
        return Completion(self.tokenizer.decode(ids, skip_special_tokens=True), ids, finished,
                          None if logprobs is None else tuple(logprobs[:len(ids)]))


def _token_logprobs(logits: Sequence[torch.Tensor], tokens: torch.Tensor) -> list[list[float]]:
    """Per row, the log-probability of each generated token under the raw logits of its step."""
    steps = torch.stack([step.float() for step in logits], dim=1)  # [B, T, V]
    chosen = torch.log_softmax(steps, dim=-1).gather(2, tokens[:, :steps.shape[1], None])
    return chosen.squeeze(2).tolist()
