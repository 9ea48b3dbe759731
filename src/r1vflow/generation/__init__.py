"""One generation engine for every stage that generates (GRPO rollouts and the SSB prefilter,
MPO's pair sampling, AL-CoTD's chains, evaluation and `r1vflow eval run`).

    engine = build_engine(settings, model, tokenizer)          # transformers or vLLM
    groups = engine.generate(prompt_ids, images, Sampling(max_new_tokens=64, temperature=1.0,
                                                           n=8, seed=0, logprobs=True))
    engine.sync(model)                                          # after an optimizer step

Two backends behind one protocol (`GenerationEngine`):
- `TransformersEngine`: `model.generate` on the live model (always available; CPU or one GPU);
- `VLLMEngine`: an in-process vLLM V1 engine colocated with the trainer (TRL's colocate mode,
  EasyR1), built empty (`load_format="dummy"`) and filled by the same weight sync that follows
  every optimizer step (`r1vflow.generation.weights` maps the policy's names to vLLM's).

`build_engine` picks one from a `GenerationConfig` (`backend: auto | vllm | transformers`) and
says which it chose and why (docs/grpo.md, "The generation engine").
"""

from r1vflow.generation.base import (
    Completion,
    GenerationEngine,
    PromptImages,
    Sampling,
    WeightSyncError,
)
from r1vflow.generation.choose import build_engine, choose_backend
from r1vflow.generation.hf import TransformersEngine

__all__ = ["Completion", "GenerationEngine", "PromptImages", "Sampling", "TransformersEngine",
           "WeightSyncError", "build_engine", "choose_backend"]
