"""LoRA adapters (the peft library) on a VLM's LLM, and the merged weights everything else reads.

    apply_lora(model, cfg.lora)               # after set_trainable; a no-op for lora: null
    save_model(model, tokenizer, out, meta)   # (models.io) merged weights + out/adapter/
    engine.sync(model)                        # (generation) merged weights, base names

The adapters are injected in place (`peft.inject_adapter_in_model`) into the VLM itself, not
into a `PeftModel` wrapper: the model keeps its class, its family, its part names and its
`generate`, so the trainers, the engines and the checkpoints take it as it is. A targeted
linear layer `...q_proj` becomes peft's `lora.Linear` holding `q_proj.base_layer` (the frozen W)
and `q_proj.lora_A.default` / `q_proj.lora_B.default` (A [r, in], B [out, r]); its output is
x W^T + dropout(x) A^T B^T * alpha/r. Only the LLM is adapted: the target is a regular
expression over module names under `model.language_model.` (the LLM of every family,
r1vflow.models.families), so a vision tower's `q_proj` is never touched.

Everything outside training reads merged weights W + B@A * alpha/r under the base names
(`...q_proj.weight`): the saved model (`save_pretrained`, beside it the adapter in peft's
format: `adapter/adapter_config.json` + `adapter/adapter_model.safetensors`, keys
`base_model.model.<name>.lora_A.weight`, loadable with `PeftModel.from_pretrained` on the
start model) and the vLLM weight sync (`merged_parameters`). A resumable checkpoint holds the
model's state dict as it is (base weights and adapters), which loads into a model the stage
built the same way: `apply_lora` runs before the engine and before any restore.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from r1vflow.models.families import family_of, part_parameters

if TYPE_CHECKING:
    from r1vflow.config import LoRAConfig

ADAPTER_DIR = "adapter"  # <model dir>/adapter: the adapter the merged model was made with
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER = "default"  # peft's adapter name (it leaves it out of the saved keys)
LLM_PREFIX = "model.language_model."  # the LLM's modules in every family's VLM
PEFT_PREFIX = "base_model.model."  # what PeftModel puts before a module name in saved keys


def _vlm(model: torch.nn.Module) -> torch.nn.Module:
    """The VLM inside a DDP / DeepSpeed wrapper or a RewardModel (`.vlm`)."""
    model = getattr(model, "module", model)
    return getattr(model, "vlm", model)


def target_regex(modules: Iterable[str]) -> str:
    """peft's `target_modules` as one regular expression (full match on module names): the
    named linear layers of the LLM only."""
    names = "|".join(re.escape(m) for m in modules)
    return rf"{re.escape(LLM_PREFIX)}.*\.({names})"


def _llm_linear_names(vlm: torch.nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in vlm.named_modules()
            if name.startswith(LLM_PREFIX) and isinstance(module, torch.nn.Linear)}


def apply_lora(model: torch.nn.Module, settings: LoRAConfig | None) -> dict[str, int]:
    """Inject LoRA adapters into the LLM of `model` (a VLM or a RewardModel) in place.

    The LLM's base weights are frozen and the adapters train; every other parameter keeps the
    trainable flag it had (call `set_trainable` first). Raises ValueError naming the target
    modules the LLM has no linear layer for. Returns the trainable parameters per part, as
    `set_trainable` does (llm: the adapters'); {} when `settings` is None (nothing changes)."""
    if settings is None:
        return {}
    from peft import LoraConfig, inject_adapter_in_model

    vlm = _vlm(model)
    if has_lora(vlm):
        raise ValueError("apply_lora: the model already carries LoRA adapters")
    if any(hasattr(p, "ds_id") for p in vlm.parameters()):
        raise ValueError("apply_lora: the model is partitioned by DeepSpeed ZeRO-3; adapters "
                         "are added to whole models only (use zero_stage 2 with lora)")
    known = _llm_linear_names(vlm)
    missing = [m for m in settings.target_modules if m not in known]
    if missing:
        raise ValueError(f"lora.target_modules {missing}: the LLM has no linear layer of that "
                         f"name; its linear layers are {sorted(known)}")
    flags = {id(p): p.requires_grad for p in vlm.parameters()}
    config = LoraConfig(r=settings.rank, lora_alpha=settings.scale_alpha,
                        lora_dropout=settings.dropout, bias="none",
                        target_modules=target_regex(settings.target_modules))
    inject_adapter_in_model(config, vlm, adapter_name=ADAPTER)
    part_of = family_of(vlm).part_of
    for name, param in vlm.named_parameters():
        if ".lora_" in name:
            param.requires_grad_(True)
        elif part_of(name) == "llm":  # its embeddings and lm_head too
            param.requires_grad_(False)
        else:  # peft froze everything it did not add: the other parts' flags come back
            param.requires_grad_(flags[id(param)])
    vlm.peft_config = {ADAPTER: config}
    return {part: sum(p.numel() for p in params if p.requires_grad)
            for part, params in part_parameters(vlm).items()}


def lora_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(module name, peft LoRA layer) of every adapted layer, in module order."""
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in _vlm(model).named_modules()
            if isinstance(module, LoraLayer)]


def has_lora(model: torch.nn.Module) -> bool:
    """Whether `model` carries LoRA layers (peft not imported yet: it cannot)."""
    return "peft" in sys.modules and bool(lora_layers(model))


def _merged(layer: torch.nn.Module) -> torch.Tensor:
    """W + B@A * alpha/r of one LoRA layer, in W's dtype."""
    base = layer.base_layer.weight
    return base.detach() + layer.get_delta_weight(ADAPTER).detach().to(base.dtype)


def _base_name(name: str) -> str:
    return name.replace(".base_layer.", ".")


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The VLM's state dict as the model without adapters has it: every adapted layer's
    `weight` merged, its bias and every other tensor as they are, no adapter tensors."""
    vlm = _vlm(model)
    merged = {f"{name}.weight": _merged(layer) for name, layer in lora_layers(vlm)}
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, value in vlm.state_dict().items():
            if ".lora_" in key:
                continue
            key = _base_name(key)
            state[key] = merged.get(key, value)
    return state


def merged_parameters(model: torch.nn.Module,
                      names: set[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(base name, tensor) of what a serving engine loads: every adapted layer as its merged
    `weight` (and its bias), every other parameter as it is; with `names` (parameter names as
    the adapted model has them, e.g. its trainable ones) only those, an adapter or base
    parameter standing for its layer's merged weight."""
    vlm = _vlm(model)
    layers = dict(lora_layers(vlm))
    owner = re.compile(r"^(.*)\.(lora_[A-Za-z_]+|base_layer)\.")
    wanted_layers: set[str] = set()
    with torch.no_grad():
        for name, param in vlm.named_parameters():
            found = owner.match(name)
            if found and found.group(1) in layers:
                layer = found.group(1)
                if (names is None or name in names) and layer not in wanted_layers:
                    wanted_layers.add(layer)
                    yield f"{layer}.weight", _merged(layers[layer])
                    bias = layers[layer].base_layer.bias
                    if bias is not None and names is None:
                        yield f"{layer}.bias", bias.detach()
            elif names is None or name in names:
                yield name, param.detach()


def save_pretrained(model: torch.nn.Module, out: Path, base: str | None) -> None:
    """`model.save_pretrained(out)`; with adapters: the merged weights, and the adapter in
    `out/adapter` (peft's format; `base`, the model it adapts, as its base_model_name_or_path)."""
    if not has_lora(model):
        model.save_pretrained(out)
        return
    model.save_pretrained(out, state_dict=merged_state_dict(model))
    save_adapter(model, out / ADAPTER_DIR, base)


def save_adapter(model: torch.nn.Module, out: Path, base: str | None) -> Path:
    """The adapter as `PeftModel.save_pretrained` writes it: adapter_config.json and
    adapter_model.safetensors (keys `base_model.model.<module>.lora_A.weight`)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    vlm = _vlm(model)
    config = vlm.peft_config[ADAPTER]
    # embedding layers are not adapted: peft need not look the base model up to check them
    state = get_peft_model_state_dict(vlm, adapter_name=ADAPTER, save_embedding_layers=False)
    config.base_model_name_or_path = base
    out.mkdir(parents=True, exist_ok=True)
    save_file({PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in state.items()},
              str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config.save_pretrained(str(out))
    return out


def adapter_settings(model_dir: str | Path) -> dict[str, Any] | None:
    """rank, alpha, dropout and target_modules of the adapter saved beside a model (None:
    the model was trained without one)."""
    path = Path(model_dir) / ADAPTER_DIR / ADAPTER_CONFIG
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return {"rank": saved["r"], "alpha": saved["lora_alpha"], "dropout": saved["lora_dropout"],
            "target_modules": saved["target_modules"]}
