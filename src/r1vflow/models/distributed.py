"""This process among the ranks: its rank and world size, the process group DeepSpeed and DDP
work in, and loading a model straight into ZeRO-3 partitions.

Below `train` (the engine), `generation` (vLLM joins the trainer's process group) and
`models.io` (`load_model(..., zero3=...)`) alike, so none of them imports a layer above it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch


def rank_world(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) of this process.

    From the torch.distributed process group when one is initialized. Otherwise, when `environ`
    is given (the launcher, before any group exists), from torchrun's RANK / WORLD_SIZE in it;
    else (0, 1): training code without a process group acts as a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if environ is not None:
        return int(environ.get("RANK", "0")), int(environ.get("WORLD_SIZE", "1"))
    return 0, 1


def _ensure_single_process_env() -> None:
    """Give a lone process the torch.distributed env vars torchrun would have set."""
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
    defaults = {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def rank_device_backend() -> str:
    """The process-group backend of this rank, for both engines: NCCL with this rank's GPU
    (torchrun's LOCAL_RANK) made current, else gloo."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return "nccl"
    return "gloo"


def init_deepspeed_distributed() -> None:
    """Open the process group DeepSpeed works in, when nobody did: NCCL on this rank's GPU, else
    gloo; a lone process gets torchrun's env vars first."""
    import deepspeed

    if torch.distributed.is_initialized():
        return
    _ensure_single_process_env()
    deepspeed.init_distributed(dist_backend=rank_device_backend())


@contextmanager
def zero3_init(config: dict[str, Any] | None) -> Iterator[None]:
    """Inside, transformers' `from_pretrained` builds models under `deepspeed.zero.Init` and
    loads the checkpoint into the partitions: each rank holds 1/world of every parameter, never
    the full model (transformers' DeepSpeed integration). `config` is the ZeRO-3 DeepSpeed config
    the engine will train with (`r1vflow.train.engine.zero3_load_config`); None: a plain load.

    transformers keeps only a weak reference to the `HfDeepSpeedConfig`; it is held here until
    the block ends and then dropped, so that models loaded later in the stage (a reward scorer,
    an evaluation copy) load whole, and `generate` after training does not switch to
    `synced_gpus`. The process group is opened first (zero.Init partitions across it)."""
    if config is None:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    init_deepspeed_distributed()
    hf_config = HfDeepSpeedConfig(config)
    if not hf_config.is_zero3():
        raise ValueError(f"zero3_init needs a ZeRO-3 config, got stage "
                         f"{config.get('zero_optimization', {}).get('stage')}")
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del hf_config
