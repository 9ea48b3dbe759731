"""What every generation backend shares: the sampling request, the completion, the images of a
prompt, and the checks both backends make before they generate."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from r1vflow.models.families.images import ImageBatch, ImageInput

# The images of each prompt, in the order its placeholders appear: one list per prompt (several
# images per prompt, e.g. MMMU), or a batch with exactly one image per prompt (a `[P,3,S,S]`
# tensor or an ImageBatch, as the training data carries them), or None for text-only prompts.
PromptImages = Sequence[Sequence[torch.Tensor | ImageInput]] | torch.Tensor | ImageBatch | None


class WeightSyncError(RuntimeError):
    """A policy parameter the engine cannot place (named), or engine weights left unset."""


@dataclass(frozen=True)
class Sampling:
    """One generation request's settings.

    temperature 0 is greedy decoding (then n must be 1: copies would be equal); otherwise plain
    temperature sampling, no top-k / top-p, as evaluation and the GRPO rollouts both use.
    seed makes a call reproducible given the weights (None: unseeded). logprobs: also return
    each sampled token's log-probability under the model's raw distribution (before temperature
    and penalties), the quantity the trainer computes.
    """

    max_new_tokens: int
    temperature: float = 0.0
    n: int = 1
    seed: int | None = None
    repetition_penalty: float = 1.0
    logprobs: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.n < 1:
            raise ValueError(f"n (samples per prompt) must be >= 1, got {self.n}")
        if self.temperature == 0 and self.n != 1:
            raise ValueError("greedy decoding (temperature 0) gives identical copies; ask for "
                             f"n=1, not {self.n}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


@dataclass(frozen=True)
class Completion:
    """One generated response: decoded text (reasoning tags kept, control tokens dropped), its
    token ids (cut after the first eos, which is kept), whether it hit eos, and, when asked
    for, each token's log-probability under the engine's model."""

    text: str
    token_ids: list[int]
    finished: bool
    logprobs: tuple[float, ...] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@runtime_checkable
class GenerationEngine(Protocol):
    """Samples completions of tokenized prompts from a policy's current weights."""

    backend: str  # "transformers" or "vllm"

    def generate(self, prompt_ids: Sequence[Sequence[int]], images: PromptImages,
                 sampling: Sampling) -> list[list[Completion]]:
        """P prompts (chat template and image placeholders included) -> P lists of
        `sampling.n` completions, in prompt order."""
        ...

    def sync(self, model: torch.nn.Module, names: Iterable[str] | None = None) -> float:
        """Make later calls sample from `model`'s current weights (only the parameters in
        `names` changed, when given); returns the seconds it took."""
        ...

    def close(self) -> None:
        """Free the engine's memory (a no-op for the transformers backend)."""
        ...


def trim_completion(row: Sequence[int], eos_id: int, pad_id: int) -> tuple[list[int], bool]:
    """Cut a generated row after its first eos (kept) -> (ids, True); without eos drop the
    trailing padding -> (ids, False)."""
    row = list(row)
    if eos_id in row:
        return row[: row.index(eos_id) + 1], True
    while row and row[-1] == pad_id:
        row.pop()
    return row, False


def per_prompt_images(images: PromptImages, n_prompts: int) -> list[list] | None:
    """Any `PromptImages` -> one list of images per prompt (None: text-only)."""
    if images is None:
        return None
    if isinstance(images, ImageBatch):
        rows = [[item] for item in images.items]
    elif isinstance(images, torch.Tensor):
        rows = [[image] for image in images]
    else:
        rows = [list(row) for row in images]
    if len(rows) != n_prompts:
        raise ValueError(f"{n_prompts} prompts but images for {len(rows)}")
    return rows


def check_prompts(prompt_ids: Sequence[Sequence[int]]) -> None:
    if not prompt_ids:
        raise ValueError("generate: no prompts given")
    if any(len(ids) == 0 for ids in prompt_ids):
        raise ValueError("generate: every prompt needs at least one token")
