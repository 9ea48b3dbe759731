"""Where this process runs, as far as local disk goes: inside a cluster task pod or not, and
the fast local disk (scratch) every output, checkpoint and download directory is made under.

Below `train` (the checkpoints' local root) and `runtime` (task outputs before they are
published, the launcher's worker files) alike; `runtime.cluster` adds the rest of what a task
on a cluster needs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

POD_NAMESPACE_ENV = "R1VFLOW_POD_NAMESPACE"  # set in every cluster task: the marker of one
SCRATCH_ENV = "R1VFLOW_SCRATCH"
SCRATCH_MOUNT = "/scratch"


def on_cluster(environ: MutableMapping[str, str] | None = None) -> bool:
    """True inside a task pod of a compiled pipeline (the downward-API namespace is set)."""
    env = os.environ if environ is None else environ
    return bool(env.get(POD_NAMESPACE_ENV))


def scratch_root(environ: MutableMapping[str, str] | None = None) -> Path:
    """Fast local disk for outputs, checkpoints and downloads: $R1VFLOW_SCRATCH (TrainJob nodes,
    tests), else /scratch in a cluster task that mounts it (`resources.<stage>.scratch_size`),
    else the system temp dir. Every scratch path r1vflow uses comes from here."""
    env = os.environ if environ is None else environ
    if env.get(SCRATCH_ENV):
        return Path(env[SCRATCH_ENV])
    mount = Path(SCRATCH_MOUNT)
    return mount if on_cluster(env) and mount.is_dir() else Path(tempfile.gettempdir())


def scratch_dir(stage: str, name: str, environ: MutableMapping[str, str] | None = None) -> Path:
    """A new directory for output `name` of `stage` before it is published, under scratch_root."""
    root = scratch_root(environ)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"r1vflow-{stage}-{name}-", dir=root))
