"""GRPO's rollouts: `group_size` completions per prompt from the generation engine.

    rollout = Rollout(engine, max_new_tokens=64, temperature=1.0)
    groups = rollout.generate(prompt_ids, pixel_values, num_samples, seed)   # P lists of G
    rollout.sync(model, names)   # after an optimizer step: the engine samples the new weights

Prompts arrive already tokenized (chat template, image placeholders included), so the token ids
the loss sees are exactly the ones the engine continued. With vLLM every completion carries
vLLM's per-token log-probabilities (`Completion.logprobs`), which GRPO compares with the
trainer's (the rollout/trainer mismatch) and can correct for (truncated importance sampling).
The engine is `r1vflow.generation`'s: transformers on the live policy, or vLLM colocated.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from r1vflow.generation import Completion, GenerationEngine, Sampling, TransformersEngine
from r1vflow.generation.base import trim_completion
from r1vflow.generation.hf import left_pad

__all__ = ["Rollout", "left_pad", "trim_completion"]


@dataclass
class Rollout:
    """Sampling settings of the rollouts over one engine, and the sync statistics.

    logprobs: ask the engine for each sampled token's log-probability (vLLM always; the
    transformers backend only when truncated importance sampling needs them).
    """

    engine: GenerationEngine
    max_new_tokens: int
    temperature: float = 1.0
    logprobs: bool | None = None
    syncs: int = 0
    sync_seconds: float = 0.0
    generated_tokens: int = 0
    generate_seconds: float = 0.0

    @classmethod
    def transformers(cls, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                     max_new_tokens: int, temperature: float = 1.0,
                     batch_size: int = 64) -> Rollout:
        """Rollouts with `model.generate` on the live policy."""
        return cls(TransformersEngine(model, tokenizer, batch_size), max_new_tokens, temperature)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"rollout: temperature must be > 0 (groups need distinct "
                             f"samples), got {self.temperature}")
        if self.logprobs is None:
            self.logprobs = self.engine.backend == "vllm"

    def generate(self, prompt_ids: Sequence[Sequence[int]], pixel_values, num_samples: int,
                 seed: int) -> list[list[Completion]]:
        """P prompts -> P lists of `num_samples` completions (same seed and weights: same
        completions)."""
        if num_samples < 1:
            raise ValueError(f"rollout: num_samples must be >= 1, got {num_samples}")
        start = time.perf_counter()
        groups = self.engine.generate(
            prompt_ids, pixel_values,
            Sampling(self.max_new_tokens, self.temperature, num_samples, seed,
                     logprobs=bool(self.logprobs)))
        self.generate_seconds += time.perf_counter() - start
        self.generated_tokens += sum(c.num_tokens for g in groups for c in g)
        return groups

    def sync(self, model: torch.nn.Module, names: Iterable[str] | None = None) -> float:
        """Push the policy's weights (the trainable ones, when `names` is given) to the engine."""
        seconds = self.engine.sync(model, names)
        if self.engine.backend != "transformers":
            self.syncs += 1
            self.sync_seconds += seconds
        return seconds
