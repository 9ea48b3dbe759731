"""Which backend generates: `generation.backend` auto, vllm or transformers."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from r1vflow.config.generation import GenerationConfig
from r1vflow.generation.base import GenerationEngine
from r1vflow.generation.hf import TransformersEngine
from r1vflow.generation.weights import vllm_refusal


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose_backend(settings: GenerationConfig, config: Any,
                   on_cpu: bool | None = None) -> tuple[str, str]:
    """(backend, why) for a model of `config`. backend vllm raises ValueError when vLLM is
    missing or cannot serve the model; auto falls back to transformers and says why."""
    on_cpu = not torch.cuda.is_available() if on_cpu is None else on_cpu
    if settings.backend == "transformers":
        return "transformers", "generation.backend is transformers"
    refusal = None if vllm_installed() else "vLLM is not installed"
    refusal = refusal or vllm_refusal(config, on_cpu)
    if settings.backend == "vllm":
        if refusal:
            raise ValueError(f"generation.backend is vllm but {refusal}; set generation.backend "
                             "to auto or transformers")
        return "vllm", "generation.backend is vllm"
    if refusal:
        return "transformers", f"auto: {refusal}"
    return "vllm", "auto: vLLM is installed and serves this model"


def build_engine(settings: GenerationConfig, model: torch.nn.Module,
                 tokenizer: PreTrainedTokenizerBase,
                 say: Callable[[str], None] | None = print) -> GenerationEngine:
    """The engine `settings` choose for `model` (a vLLM engine is built and synced now)."""
    backend, why = choose_backend(settings, getattr(model, "module", model).config)
    if backend == "transformers":
        engine: GenerationEngine = TransformersEngine(model, tokenizer, settings.batch_size)
        if say:
            say(f"generation: transformers ({why})")
        return engine
    from r1vflow.generation.vllm_engine import VLLMEngine, describe

    engine = VLLMEngine(getattr(model, "module", model), tokenizer, settings)
    if say:
        say(f"generation: vllm ({why}); {describe(engine)}; first sync "
            f"{engine.sync_seconds:.2f} s")
    return engine
