"""The `internvl_chat` layout (Skywork-R1V/R1V2-38B, OpenGVLab InternVL-Chat) <-> native InternVL.

Released `internvl_chat` checkpoints ship remote code (`InternVLChatModel`, `InternVisionModel`)
that transformers only runs with `trust_remote_code`. r1vflow never runs it: it reads the
config.json and the safetensors as data and renames the tensors onto transformers'
`InternVLForConditionalGeneration`:

    vision_model.embeddings.class_embedding        -> model.vision_tower.embeddings.cls_token
    vision_model.encoder.layers.i.attn.qkv          -> ...encoder.layer.i.attention.{q,k,v}_proj
    vision_model.encoder.layers.i.{ls1,norm1,...}   -> ...{lambda_1,layernorm_before,...}
    mlp1.{0,1,3}                                    -> model.multi_modal_projector.{layer_norm,
                                                       linear_1,linear_2}
    language_model.model.* / language_model.lm_head -> model.language_model.* / lm_head

`to_native` checks that every source tensor matches exactly one rule (else: extra tensors,
named), that the result has every tensor the native model has with its shape (else: missing
tensors or shape mismatches, named), and `to_chat` inverts it exactly (the fused qkv is the
concatenation of the three projections it was split into).

A standalone InternViT checkpoint (OpenGVLab/InternViT-6B-448px-*, model_type `intern_vit_6b`,
`InternVisionModel`) holds the same vision tensors without the `vision_model.` prefix;
`vision_to_native` / `vision_to_standalone` apply the same rules to it, onto transformers'
`InternVLVisionModel` (names without `model.vision_tower.`), with the same checks.
"""

from __future__ import annotations

import re
from typing import Any

import torch

_V = "vision_model.encoder.layers.{i}."
_N = "model.vision_tower.encoder.layer.{i}."
# (chat name, native name): {i} is a layer index, {p} weight|bias, {r} any remaining path.
RENAMES: tuple[tuple[str, str], ...] = (
    ("vision_model.embeddings.class_embedding", "model.vision_tower.embeddings.cls_token"),
    ("vision_model.embeddings.patch_embedding.{p}",
     "model.vision_tower.embeddings.patch_embeddings.projection.{p}"),
    ("vision_model.embeddings.position_embedding",
     "model.vision_tower.embeddings.position_embeddings"),
    (_V + "attn.proj.{p}", _N + "attention.projection_layer.{p}"),
    (_V + "attn.q_norm.{p}", _N + "attention.q_norm.{p}"),
    (_V + "attn.k_norm.{p}", _N + "attention.k_norm.{p}"),
    (_V + "ls1", _N + "lambda_1"),
    (_V + "ls2", _N + "lambda_2"),
    (_V + "norm1.{p}", _N + "layernorm_before.{p}"),
    (_V + "norm2.{p}", _N + "layernorm_after.{p}"),
    (_V + "mlp.fc1.{p}", _N + "mlp.fc1.{p}"),
    (_V + "mlp.fc2.{p}", _N + "mlp.fc2.{p}"),
    ("mlp1.0.{p}", "model.multi_modal_projector.layer_norm.{p}"),
    ("mlp1.1.{p}", "model.multi_modal_projector.linear_1.{p}"),
    ("mlp1.3.{p}", "model.multi_modal_projector.linear_2.{p}"),
    ("language_model.lm_head.{p}", "lm_head.{p}"),
    ("language_model.model.{r}", "model.language_model.{r}"),
)
QKV = (_V + "attn.qkv.{p}", tuple(_N + f"attention.{x}_proj.{{p}}" for x in "qkv"))
_GROUPS = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)", "r": r"(?P<r>.+)"}


def _regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for key, group in _GROUPS.items():
        pattern = pattern.replace(re.escape("{" + key + "}"), group)
    return re.compile(pattern + "$")


_FORWARD = [(_regex(chat), native) for chat, native in RENAMES]
_BACKWARD = [(_regex(native), chat) for chat, native in RENAMES]
_QKV_CHAT = _regex(QKV[0])
_QKV_NATIVE = [_regex(t) for t in QKV[1]]


def _rename(name: str, rules) -> str | None:
    for pattern, template in rules:
        match = pattern.match(name)
        if match:
            return template.format(**match.groupdict())
    return None


CHAT_VISION, NATIVE_VISION = "vision_model.", "model.vision_tower."


def to_native(source: dict[str, torch.Tensor],
              expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Chat-layout tensors -> native InternVL tensors; `expected` is the native model's
    name -> shape. ValueError naming extra, missing or mis-shaped tensors."""
    return _to_native(source, expected, "internvl_chat checkpoint", "native InternVL model",
                      lambda name: name)


def vision_to_native(source: dict[str, torch.Tensor],
                     expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Standalone InternViT tensors (`embeddings.*`, `encoder.layers.*`) -> the tensors of
    transformers' `InternVLVisionModel`, whose name -> shape is `expected`; the rules and checks
    of `to_native`, errors naming the tensors as the InternViT checkpoint / the native model
    call them."""
    prefixed = {CHAT_VISION + k: v for k, v in source.items()}
    want = {NATIVE_VISION + k: v for k, v in expected.items()}

    def strip(name: str) -> str:
        for prefix in (CHAT_VISION, NATIVE_VISION):
            if name.startswith(prefix):
                return name[len(prefix):]
        return name

    out = _to_native(prefixed, want, "InternViT checkpoint", "native InternVLVisionModel",
                     strip)
    return {strip(k): v for k, v in out.items()}


def vision_to_standalone(native: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `vision_to_native`: InternVLVisionModel tensors -> InternViT names."""
    back = to_chat({NATIVE_VISION + k: v for k, v in native.items()})
    other = sorted(k for k in back if not k.startswith(CHAT_VISION))
    if other:
        raise ValueError(f"not InternViT vision tensors: {other[:8]}")
    return {k[len(CHAT_VISION):]: v for k, v in back.items()}


def _source_name(native: str) -> str | None:
    """The source (chat-layout) name a native tensor comes from."""
    for pattern in _QKV_NATIVE:
        match = pattern.match(native)
        if match:
            return QKV[0].format(**match.groupdict())
    return _rename(native, _BACKWARD)


def _to_native(source, expected, what: str, native_what: str, show) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    extra = []
    for name, tensor in source.items():
        qkv = _QKV_CHAT.match(name)
        if qkv:
            for template, part in zip(QKV[1], tensor.chunk(3, dim=0), strict=True):
                out[template.format(**qkv.groupdict())] = part.clone()
            continue
        target = _rename(name, _FORWARD)
        if target is None or target in out:
            extra.append(name)
        else:
            out[target] = tensor
    if extra:
        raise ValueError(f"{what} has {len(extra)} tensor(s) the {native_what} has no place "
                         f"for: {sorted(show(n) for n in extra)[:8]}")
    _check_against(out, expected, what, native_what, show)
    return out


def _check_against(out: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]],
                   what: str, native_what: str, show) -> None:
    missing = sorted(set(expected) - set(out))
    if missing:
        sources = sorted({show(_source_name(n) or n) for n in missing})
        raise ValueError(f"{what} lacks {len(sources)} tensor(s) the {native_what} needs: "
                         f"{sources[:8]} (native names: {[show(n) for n in missing[:8]]})")
    unused = sorted(set(out) - set(expected))
    if unused:
        raise ValueError(f"{what} has {len(unused)} tensor(s) the {native_what} does not use: "
                         f"{[show(n) for n in unused[:8]]} (as native names)")
    wrong = [f"{show(k)}: {tuple(out[k].shape)} != {expected[k]}" for k in sorted(out)
             if tuple(out[k].shape) != tuple(expected[k])]
    if wrong:
        raise ValueError(f"{what} tensors do not fit the native config: {wrong[:8]}")


def to_chat(native: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `to_native`: native InternVL tensors -> the internvl_chat layout."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in native.items():
        if _QKV_NATIVE[0].match(name):
            groups = _QKV_NATIVE[0].match(name).groupdict()
            parts = [native[t.format(**groups)] for t in QKV[1]]
            out[QKV[0].format(**groups)] = torch.cat(parts, dim=0)
            continue
        if any(p.match(name) for p in _QKV_NATIVE[1:]):
            continue  # consumed with its q_proj
        target = _rename(name, _BACKWARD)
        if target is None:
            raise ValueError(f"native tensor {name!r} has no internvl_chat name")
        out[target] = tensor
    return out


def native_config(chat: dict[str, Any], image_token_id: int) -> dict[str, Any]:
    """An InternVLConfig dict from an internvl_chat config.json dict (no remote code)."""
    if chat.get("ps_version", "v2") != "v2":
        raise ValueError(f"internvl_chat ps_version {chat.get('ps_version')!r}: the native "
                         "InternVL pixel shuffle is v2's; v1 checkpoints cannot be converted")
    vision = chat["vision_config"]
    llm = {k: v for k, v in chat["llm_config"].items()
           if k not in ("architectures", "auto_map", "_name_or_path", "use_bfloat16")}
    size = int(chat.get("force_image_size") or vision["image_size"])
    patch = int(vision["patch_size"])
    ratio = float(chat.get("downsample_ratio", 0.5))
    return {
        "model_type": "internvl",
        "architectures": ["InternVLForConditionalGeneration"],
        "vision_config": vision_native_config(vision, size),
        "text_config": llm,
        "downsample_ratio": ratio,
        "image_token_id": image_token_id,
        "image_seq_length": int((size // patch) ** 2 * ratio**2),
        "vision_feature_layer": int(chat.get("select_layer", -1)),
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
        "tie_word_embeddings": bool(llm.get("tie_word_embeddings", False)),
    }


def vision_native_config(vision: dict[str, Any], size: int | None = None) -> dict[str, Any]:
    """An InternVLVisionConfig dict from an InternViT (`intern_vit_6b`) config dict; `size`
    overrides its image_size (internvl_chat's force_image_size)."""
    size = int(size or vision["image_size"])
    patch = int(vision["patch_size"])
    return {
        "hidden_size": vision["hidden_size"],
        "intermediate_size": vision["intermediate_size"],
        "num_attention_heads": vision["num_attention_heads"],
        "num_hidden_layers": vision["num_hidden_layers"],
        "image_size": [size, size], "patch_size": [patch, patch],
        "layer_norm_eps": vision.get("layer_norm_eps", 1e-6),
        "norm_type": vision.get("norm_type", "rms_norm"),
        "use_qk_norm": bool(vision.get("qk_normalization", False)),
        "attention_bias": bool(vision.get("qkv_bias", False)),
        "hidden_act": vision.get("hidden_act", "gelu"),
        "use_absolute_position_embeddings": True,
    }


def image_processor_config(chat: dict[str, Any]) -> dict[str, Any]:
    """GotOcr2ImageProcessor settings of the checkpoint's tiling (448px tiles, ImageNet
    normalisation, 1..max_dynamic_patch tiles plus a thumbnail when dynamic)."""
    size = int(chat.get("force_image_size") or chat["vision_config"]["image_size"])
    return {
        "size": {"height": size, "width": size},
        "crop_to_patches": bool(chat.get("dynamic_image_size", False)),
        "min_patches": int(chat.get("min_dynamic_patch", 1)),
        "max_patches": int(chat.get("max_dynamic_patch", 12)),
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
