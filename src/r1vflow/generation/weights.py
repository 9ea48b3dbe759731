"""The policy's parameter names -> the checkpoint names vLLM's model classes load, per family.

vLLM reads a model's weights under the names its checkpoint format uses and maps them to its own
modules. The names a transformers model has in memory are mostly those names, but not always:
a Llava composition built by r1vflow holds its SigLIP / CLIP tower as `model.vision_tower.
embeddings...`, while vLLM's Llava loads `vision_tower.vision_model.embeddings...` (measured:
vLLM refused the checkpoint). A transformers release that renames keys breaks syncs the same
way, so every family has one explicit table here and a name no table entry matches is refused,
named, before anything reaches the engine.

`vllm_refusal(config)` says why vLLM cannot serve a model (None when it can); the engine's
`auto` choice and the stages' validation read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from r1vflow.generation.base import WeightSyncError

# Head sizes vLLM's CPU attention backend accepts (vllm/v1/attention/backends/cpu_attn.py).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# Vision towers vLLM's Llava builds (its init_vision_tower_for_llava).
LLAVA_TOWERS = ("clip_vision_model", "siglip_vision_model", "pixtral")
# Causal LMs the text-only path syncs (the LLM alone, e.g. GRPO on a plain reasoning LLM).
TEXT_ONLY = ("qwen2", "qwen3", "llama", "mistral")


@dataclass(frozen=True)
class NameMap:
    """Ordered (policy prefix, vLLM prefix) rules; the first prefix that matches is rewritten."""

    family: str
    rules: tuple[tuple[str, str], ...]

    def __call__(self, name: str) -> str:
        for source, target in self.rules:
            if name.startswith(source):
                return target + name[len(source):]
        raise WeightSyncError(
            f"weight sync ({self.family}): no rule places the policy parameter {name!r} in "
            f"vLLM's model; known prefixes: {[s for s, _ in self.rules]}")


_LM = (("model.", "model."), ("lm_head.", "lm_head."))
NAME_MAPS: dict[str, NameMap] = {
    # r1vflow's Llava composition: the SigLIP / CLIP tower sits one level higher than in vLLM's
    # Llava (which keeps the `vision_model.` of SiglipVisionModel / CLIPVisionModel).
    "llava": NameMap("llava", (
        ("model.vision_tower.vision_model.", "vision_tower.vision_model."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."))),
    # transformers 5's Qwen-VL and InternVL keep their checkpoint names in memory.
    "qwen2_5_vl": NameMap("qwen2_5_vl", (("model.visual.", "model.visual."),
                                         ("model.language_model.", "model.language_model."),
                                         ("lm_head.", "lm_head."))),
    "qwen3_vl": NameMap("qwen3_vl", (("model.visual.", "model.visual."),
                                     ("model.language_model.", "model.language_model."),
                                     ("lm_head.", "lm_head."))),
    "internvl": NameMap("internvl", (("model.vision_tower.", "model.vision_tower."),
                                     ("model.multi_modal_projector.",
                                      "model.multi_modal_projector."),
                                     ("model.language_model.", "model.language_model."),
                                     ("lm_head.", "lm_head."))),
    **{kind: NameMap(kind, _LM) for kind in TEXT_ONLY},
}


def name_map(config: Any) -> NameMap:
    """The table for a model's config (a transformers config or its dict)."""
    kind = _get(config, "model_type")
    if kind not in NAME_MAPS:
        raise WeightSyncError(f"weight sync: no vLLM name table for model_type {kind!r}; "
                              f"known: {sorted(NAME_MAPS)}")
    return NAME_MAPS[kind]


def _get(config: Any, key: str, default: Any = None) -> Any:
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def _text_config(config: Any) -> Any:
    return _get(config, "text_config") or config


def head_dim(config: Any) -> int:
    """The LLM's attention head size (an explicit head_dim, else hidden / heads)."""
    text = _text_config(config)
    explicit = _get(text, "head_dim")
    return int(explicit) if explicit else _get(text, "hidden_size") // _get(
        text, "num_attention_heads")


def vllm_refusal(config: Any, on_cpu: bool) -> str | None:
    """Why vLLM cannot serve a model of this config (None: it can)."""
    kind = _get(config, "model_type")
    if kind not in NAME_MAPS:
        return f"r1vflow has no vLLM weight table for model_type {kind!r}"
    tower = _get(_get(config, "vision_config") or {}, "model_type")
    if kind == "llava" and tower not in LLAVA_TOWERS:
        return (f"vLLM's Llava builds only {', '.join(LLAVA_TOWERS)} vision towers, not "
                f"{tower!r}")
    size = head_dim(config)
    if on_cpu and size not in CPU_HEAD_SIZES:
        return (f"vLLM's CPU attention takes head sizes {CPU_HEAD_SIZES}, not this LLM's "
                f"{size}")
    return None
