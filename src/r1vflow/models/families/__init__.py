"""VLM families: one dict, `FAMILIES`, and the functions every stage calls through it.

    family = family_of(model)                    # from model.config.model_type
    counts = set_parts_trainable(model, {"projector"})
    pixels = encode_pixels(model, pil_images, image_size)   # per image: tensor or ImageInput

Families: `llava` (the R1V composition: any SigLIP / CLIP tower + MLP projector + causal LM),
`qwen2_5_vl`, `qwen3_vl`, `internvl` (transformers' native classes) and `internvl_chat` (the
remote-code layout of Skywork-R1V/R1V2, converted to `internvl` at import, never executed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from r1vflow.models.families.base import (
    INTERNVL,
    INTERNVL_CHAT,
    LLAVA,
    PARTS,
    QWEN2_5_VL,
    QWEN3_VL,
    Family,
)

FAMILIES: dict[str, Family] = {f.name: f for f in (LLAVA, QWEN2_5_VL, QWEN3_VL, INTERNVL,
                                                   INTERNVL_CHAT)}
# Families a model directory of r1vflow holds (internvl_chat is converted at import).
NATIVE: tuple[str, ...] = ("llava", "qwen2_5_vl", "qwen3_vl", "internvl")
PROCESSOR_ATTR = "r1vflow_image_processor"  # the image processor a loaded model carries

__all__ = ["FAMILIES", "NATIVE", "PARTS", "Family", "detect_family", "encode_pixels", "family",
           "family_of", "model_class", "part_parameters", "read_config"]


def family(name: str) -> Family:
    """The family called `name`; ValueError listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def read_config(directory: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint directory; FileNotFoundError / ValueError name the file."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no config.json: not a model checkpoint")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"corrupt {path}: {err}") from err


def detect_family(config: dict[str, Any]) -> Family:
    """The family of a checkpoint from its config.json contents (`model_type`)."""
    model_type = config.get("model_type")
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    raise ValueError(f"config.json has model_type {model_type!r}, which is no VLM family "
                     f"r1vflow knows ({', '.join(FAMILIES)}); pass --family to name one, or "
                     "import a vision tower and an LLM as a composition (--vision/--llm)")


def family_of(model: Any) -> Family:
    """The family of a loaded model (a VLM, or a RewardModel's `.vlm`)."""
    return detect_family({"model_type": model.config.model_type})


def model_class(fam: Family):
    """The transformers class that loads a model directory of this family."""
    import transformers

    if fam.name not in NATIVE:
        raise ValueError(f"{fam.name} checkpoints are converted at import, not loaded: run "
                         "`r1vflow models import` first")
    return getattr(transformers, fam.model_class)


def part_parameters(model: Any) -> dict[str, list]:
    """The model's parameters by part (every parameter in exactly one)."""
    fam = family_of(model)
    parts: dict[str, list] = {p: [] for p in ("vision", "projector", "llm")}
    for name, param in model.named_parameters():
        parts[fam.part_of(name)].append(param)
    return parts


def load_image_processor(directory: str | Path):
    """The slow image processor saved in `directory`, or None (tiny path: no processor)."""
    if not (Path(directory) / "preprocessor_config.json").is_file():
        return None
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(str(directory), use_fast=False,
                                              local_files_only=True)


def encode_pixels(model: Any, images, image_size: int):
    """PIL images -> per-image model inputs for `model`: with the image processor it carries
    (`ImageInput`s), else the tiny path's `[B,3,S,S]` SigLIP-scaled tensor at `image_size`."""
    from r1vflow.data.io import images_to_tensor
    from r1vflow.models.families.images import encode_images

    processor = getattr(model, PROCESSOR_ATTR, None)
    if processor is None:
        if family_of(model).name != "llava":
            raise ValueError(f"a {family_of(model).name} model needs its image processor "
                             "(preprocessor_config.json beside the weights); re-import it")
        return images_to_tensor(images, image_size)
    return encode_images(family_of(model), processor, model.config, images)


def fixed_image_tokens(model: Any) -> int | None:
    """`<image>` tokens per image of a tiny-path Llava (no image processor: every image is one
    `[3,S,S]` tensor); None when the model reads `ImageInput`s, which carry their own count."""
    from r1vflow.models.families.images import llava_image_tokens

    if getattr(model, PROCESSOR_ATTR, None) is not None or family_of(model).name != "llava":
        return None
    return llava_image_tokens(model.config)
