"""Images -> model inputs for every family, and batches of them.

Two representations of an encoded image travel through the stages:
- a tensor `[3,S,S]` (the tiny Llava path, no image processor: `images_to_tensor`, SigLIP
  scaling); a batch is the stacked `[B,3,S,S]` tensor, exactly as before families existed;
- an `ImageInput`: the tensors the family's image processor made for one image (Qwen-VL:
  `pixel_values [patches, C*T*P*P]` + `image_grid_thw [1,3]`; InternVL: `pixel_values
  [tiles,3,S,S]`; Llava with a processor: `[1,3,S,S]`) and the prompt text that stands for it
  (as many image tokens as the model will put features there). A batch is an `ImageBatch`.

The helpers below (`stack_images`, `concat_images`, `image_kwargs`, `image_texts`, `repeat_each`)
accept both, so the training loops stay as they were.

Image processors are the slow (PIL) ones through `AutoImageProcessor`: the fast ones and the
Processor classes of Qwen-VL / InternVL need torchvision, which does not install beside the
torch in use here (docs/models.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from r1vflow.models.families.base import Family


@dataclass(frozen=True)
class ImageInput:
    """One image as its family's model inputs: tensors (dim 0 concatenates across images),
    the prompt text of its image tokens, and the RGB image itself (what vLLM, which
    preprocesses on its own, is given)."""

    tensors: dict[str, torch.Tensor]
    text: str
    source: Any = None


@dataclass(frozen=True)
class ImageBatch:
    """Several `ImageInput`s, in prompt order."""

    items: tuple[ImageInput, ...]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: slice) -> ImageBatch:
        if not isinstance(index, slice):
            raise TypeError("ImageBatch supports slices only; use .items[i] for one image")
        return ImageBatch(self.items[index])

    def tensors(self) -> dict[str, torch.Tensor]:
        keys = self.items[0].tensors.keys()
        return {k: torch.cat([item.tensors[k] for item in self.items]) for k in keys}


Images = torch.Tensor | ImageBatch
CLS_TOWERS = ("clip_vision_model", "internvl_vision")  # vision towers that prepend a CLS token


def stack_images(items: Sequence[torch.Tensor | ImageInput]) -> Images:
    """Per-image inputs -> one batch: `[B,3,S,S]` for tensors, else an ImageBatch."""
    if items and isinstance(items[0], ImageInput):
        return ImageBatch(tuple(items))
    return torch.stack(list(items))


def concat_images(batches: Sequence[Images]) -> Images:
    """Batches -> one batch, in order (torch.cat for tensors)."""
    if isinstance(batches[0], ImageBatch):
        return ImageBatch(tuple(item for batch in batches for item in batch.items))
    return torch.cat(list(batches))


def repeat_each(images: Images, times: int) -> Images:
    """Every image `times` times in a row (a0 a0 a1 a1 ...), like generate's expansion."""
    if isinstance(images, ImageBatch):
        return ImageBatch(tuple(item for item in images.items for _ in range(times)))
    return images.repeat_interleave(times, dim=0)


def image_kwargs(images: Images, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The model's keyword arguments for a batch: floating tensors in `dtype`, on `device`."""
    tensors = images.tensors() if isinstance(images, ImageBatch) else {"pixel_values": images}
    return {k: v.to(device, dtype if v.is_floating_point() else None)
            for k, v in tensors.items()}


def image_texts(images: Images, n_fixed: int | None) -> list[int | str]:
    """Per image, what `r1vflow.models.processing` writes for it: the placeholder text of an
    ImageInput, or `n_fixed` `<image>` tokens for a plain tensor batch."""
    if isinstance(images, ImageBatch):
        return [item.text for item in images.items]
    if n_fixed is None:
        raise ValueError("a tensor image batch needs the model's fixed image token count")
    return [n_fixed] * images.shape[0]


def encode_images(family: Family, processor: Any, config: Any, images: Sequence) -> list:
    """PIL images -> one `ImageInput` per image, with `processor` (the family's slow image
    processor) and the model `config` (image token counts)."""
    images = [image.convert("RGB") for image in images]
    if not images:
        return []
    if family.processor == "qwen_vl":
        return _qwen_vl(family, processor, images)
    if family.processor == "got_ocr2":
        return _got_ocr2(family, processor, config, images)
    return _siglip(family, processor, config, images)


def _qwen_vl(family: Family, processor: Any, images: list) -> list[ImageInput]:
    out = processor(images=images, return_tensors="pt")
    merge = processor.merge_size
    items, start = [], 0
    for grid in out["image_grid_thw"]:
        rows = int(grid.prod())
        items.append(ImageInput(
            {"pixel_values": out["pixel_values"][start:start + rows],
             "image_grid_thw": grid.unsqueeze(0)},
            family.placeholder(rows // merge**2), images[len(items)]))
        start += rows
    return items


def _got_ocr2(family: Family, processor: Any, config: Any, images: list) -> list[ImageInput]:
    out = processor(images=images, return_tensors="pt")
    tiles = out.get("num_patches")
    tiles = [1] * len(images) if tiles is None else [int(t) for t in tiles]
    items, start = [], 0
    for n in tiles:
        items.append(ImageInput({"pixel_values": out["pixel_values"][start:start + n]},
                                family.placeholder(n * config.image_seq_length),
                                images[len(items)]))
        start += n
    return items


def llava_image_tokens(config: Any) -> int:
    """Features one image gives a Llava model of `config`: the vision tower's patch grid (its
    image_size / patch_size, ints as in SigLIP or [h, w] as in InternVLVision), plus the CLS
    token of towers that prepend one (CLIP, InternViT), minus the first token for the
    "default" feature strategy (Llava drops it)."""
    vision = config.vision_config

    def pair(value) -> tuple[int, int]:
        return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))

    (height, width), (ph, pw) = pair(vision.image_size), pair(vision.patch_size)
    if height % ph or width % pw:
        raise ValueError(f"vision image_size {vision.image_size} is not a multiple of its "
                         f"patch_size {vision.patch_size}")
    n = (height // ph) * (width // pw) + int(vision.model_type in CLS_TOWERS)
    return n - 1 if config.vision_feature_select_strategy == "default" else n


def _siglip(family: Family, processor: Any, config: Any, images: list) -> list[ImageInput]:
    out = processor(images=images, return_tensors="pt")["pixel_values"]
    n = llava_image_tokens(config)
    return [ImageInput({"pixel_values": out[i:i + 1]}, family.placeholder(n), images[i])
            for i in range(len(images))]


def token_type_kwargs(model: Any, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Extra per-token inputs a family's forward needs: Qwen3-VL computes its M-RoPE from
    `mm_token_type_ids` [B,T] (1 on image tokens, 0 elsewhere; its processor's output)."""
    config = getattr(model, "module", model).config  # a DeepSpeed engine wraps the model
    if getattr(config, "model_type", None) != "qwen3_vl":
        return {}
    return {"mm_token_type_ids": (input_ids == config.image_token_id).long()}
