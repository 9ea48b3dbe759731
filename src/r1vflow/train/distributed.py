"""The one rank / world-size helper."""

from __future__ import annotations

from collections.abc import Mapping


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
