"""Loading DeepSpeed checkpoints without running pickled code.

DeepSpeed reads its checkpoint files with `torch.load(weights_only=False)`, which runs whatever
a pickle's `__reduce__` names: whoever can write into the checkpoint prefix of the store could
run code in every pod that resumes. Here every file goes through `torch.load(weights_only=True)`
instead, which only rebuilds tensors, containers and plain values plus the few DeepSpeed classes
its optimizer state really holds (`DEEPSPEED_GLOBALS`, a data-only allow-list): first a check of
each `*.pt` under the checkpoint before DeepSpeed opens any of them, then the loads DeepSpeed
itself makes, through its checkpoint engine. A file holding anything else is refused with
`UnsafeCheckpoint`, naming the file, and nothing in it runs.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpoint(RuntimeError):
    """A checkpoint file holds objects a weights-only load refuses (possibly code)."""


def deepspeed_globals() -> list[Any]:
    """The data-only classes DeepSpeed pickles into ZeRO optimizer state: its stage enum, the
    loss scalers (attributes only) and the fragment address (a named tuple)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def load_weights_only(path: str | Path, map_location: Any = None) -> Any:
    """`torch.load(path, weights_only=True)` with DeepSpeed's data classes allowed; anything
    else (a pickled callable, an unknown class) raises UnsafeCheckpoint naming `path`."""
    try:
        with torch.serialization.safe_globals(deepspeed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpoint(f"refusing checkpoint file {path}: a weights-only load rejects "
                               f"it ({_reason(str(err))})") from None


def _reason(message: str) -> str:
    """The line of torch's refusal that says what was refused (it opens with advice)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or line.startswith("Unsupported")]
    return ((named or lines or ["unreadable pickle"])[0])[:200]


def _global_name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def check_files(directory: Path) -> None:
    """Every `*.pt` under `directory` must pass a weights-only load (nothing in it runs): for
    torch's zip format the pickle's globals are checked without reading the tensors; any other
    file is loaded weights-only."""
    allowed = {_global_name(obj) for obj in deepspeed_globals()}
    for path in sorted(directory.rglob("*.pt")):
        try:
            unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - allowed
        except (ValueError, RuntimeError):  # not torch's zip format
            load_weights_only(path, map_location="cpu")
            continue
        if unsafe:
            raise UnsafeCheckpoint(f"refusing checkpoint file {path}: it names "
                                   f"{', '.join(sorted(unsafe))}, which a weights-only load "
                                   "rejects")


@contextmanager
def weights_only_engine(engine) -> Iterator[None]:
    """Within the block, DeepSpeed `engine`'s checkpoint engine loads weights-only."""
    ckpt_engine = engine.checkpoint_engine
    had_own = "load" in vars(ckpt_engine)
    previous = vars(ckpt_engine).get("load")
    ckpt_engine.load = load_weights_only
    try:
        yield
    finally:
        if had_own:
            ckpt_engine.load = previous
        else:
            del ckpt_engine.load
