"""Where a stage's model runs and where its batches go: the one placement helper.

Every stage loads the models it trains or runs through `load_placed`: `load_model`, then the
model on this rank's device (`run_device`: this process's GPU when there is one, under torchrun
`cuda:<LOCAL_RANK>`, else the CPU) in its dtype. The dtype is the configured one: imported
models are saved in `model.pretrained.dtype` (bfloat16 on GPU clusters) and load as saved, the
tiny models in float32; `dtype` converts on load when a caller needs another. DeepSpeed keeps
the device. tests/test_placement.py checks that no stage loads a model any other way.

Batches follow the model: `place_batch` moves a batch's tensors to the model's device
(`model_device`) and turns its images into the family's keyword arguments in the model's
dtype; the training loops and scorers place each batch through it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def run_device() -> torch.device:
    """cuda:<LOCAL_RANK> when CUDA is available, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def place(model: torch.nn.Module, dtype: torch.dtype | None = None,
          device: torch.device | str | None = None) -> torch.nn.Module:
    """Move `model` (in place) to `device` (default `run_device()`), and to `dtype` when
    given; returns it."""
    target = run_device() if device is None else torch.device(device)
    return model.to(target) if dtype is None else model.to(target, dtype)


def load_placed(model_dir: str | Path, kind: str = "vlm", *, zero3: dict[str, Any] | None = None,
                dtype: torch.dtype | None = None, device: torch.device | str | None = None):
    """The one way a stage loads a model: `r1vflow.models.io.load_model(model_dir, kind,
    zero3=zero3)` placed on this rank's device (`place`). `device="cpu"`: a part held aside
    until it is assembled into the model that runs (align_projector's reasoning LLM), which
    `place` then moves."""
    from r1vflow.models.io import load_model

    return place(load_model(model_dir, kind, zero3=zero3), dtype, device)


def model_device(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and dtype a model's inputs go to: those of its first parameter (a DDP- or
    DeepSpeed-wrapped model, a peft model: the same as the model inside)."""
    param = next(model.parameters())
    return param.device, param.dtype


def place_batch(batch: Mapping[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """`batch` ready for `model(**batch)`: tensors on the model's device; `pixel_values` (a
    [B,3,H,W] tensor or an ImageBatch) becomes the family's image arguments in the model's
    dtype, with the per-token inputs its forward needs beside them (Qwen3-VL's token types);
    other values pass as they are."""
    from r1vflow.models.families.images import image_kwargs, token_type_kwargs

    device, dtype = model_device(model)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key == "pixel_values":
            out.update(image_kwargs(value, device, dtype))
        else:
            out[key] = value.to(device) if isinstance(value, torch.Tensor) else value
    if "pixel_values" in batch and "input_ids" in out:
        out.update(token_type_kwargs(model, out["input_ids"]))
    return out
