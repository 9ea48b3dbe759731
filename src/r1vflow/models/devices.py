"""Where a stage's model runs: this process's GPU when there is one, else the CPU.

Weights keep the dtype they were saved in: imported models in `model.pretrained.dtype`
(bfloat16 on GPU clusters), the tiny models in float32. Batches follow the model (every
training and generation loop moves its tensors to the device and dtype of the model's first
parameter), so placing the model is all a stage does. Under torchrun each rank takes
`cuda:<LOCAL_RANK>`; DeepSpeed keeps that device.
"""

from __future__ import annotations

import os

import torch


def run_device() -> torch.device:
    """cuda:<LOCAL_RANK> when CUDA is available, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def place(model: torch.nn.Module) -> torch.nn.Module:
    """Move `model` (in place) to `run_device()`; returns it."""
    return model.to(run_device())
