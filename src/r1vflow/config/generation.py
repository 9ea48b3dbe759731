"""The generation engine's settings: one `generation:` section for the experiment, which the
stages that generate (distill, mpo, grpo, evaluate) can override field by field with their own
`generation:` (docs/grpo.md, "The generation engine")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from r1vflow.config.base import Strict

Backend = Literal["auto", "vllm", "transformers"]
EngineDtype = Literal["auto", "bfloat16", "float16", "float32"]


class GenerationConfig(Strict):
    """Which engine generates, and the vLLM settings a run needs (vLLM's own names)."""

    backend: Backend = Field(
        "auto", description="auto: vLLM where it is installed and can serve the model, else "
                            "transformers (the stage log says which and why); vllm: vLLM or "
                            "fail; transformers: model.generate.")
    batch_size: int = Field(64, gt=0, le=4096,
                            description="transformers: prompts per generate call.")
    dtype: EngineDtype = Field("auto", description="vLLM weights dtype; auto: the policy's.")
    max_model_len: int | None = Field(
        None, gt=0, description="vLLM: longest prompt + completion; None: the LLM's "
                                "max_position_embeddings.")
    cpu_kvcache_gb: float = Field(
        1.0, gt=0, le=1024, description="vLLM on CPUs: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="vLLM on GPUs: share of GPU memory it may take (the policy "
                                     "and optimizer share the GPU: colocated).")
    tensor_parallel_size: int = Field(
        1, ge=1, le=64, description="vLLM: GPUs one engine spans; under torchrun the engine "
                                    "runs inside the ranks (external_launcher).")
    enforce_eager: bool = Field(
        False, description="vLLM: no CUDA graphs (always eager on CPUs).")
    sleep_mode: bool = Field(
        True, description="vLLM on GPUs: release the engine's memory between rollouts (a "
                          "no-op on CPUs).")
    images_per_prompt: int = Field(
        4, ge=1, le=64, description="vLLM: most images one prompt may carry (MMMU has up to 7).")


class GenerationOverride(Strict):
    """A stage's changes to the experiment's `generation:` section (null: inherit)."""

    backend: Backend | None = None
    batch_size: int | None = Field(None, gt=0, le=4096)
    dtype: EngineDtype | None = None
    max_model_len: int | None = Field(None, gt=0)
    cpu_kvcache_gb: float | None = Field(None, gt=0, le=1024)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    tensor_parallel_size: int | None = Field(None, ge=1, le=64)
    enforce_eager: bool | None = None
    sleep_mode: bool | None = None
    images_per_prompt: int | None = Field(None, ge=1, le=64)


def merged(base: GenerationConfig, override: GenerationOverride | None) -> GenerationConfig:
    """`base` with the override's non-null fields."""
    if override is None:
        return base
    changes = override.model_dump(exclude_none=True)
    return base.model_copy(update=changes)
