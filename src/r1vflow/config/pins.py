"""What a run would refuse after it started, found before: the checkpoints `import_model` would
download from the hub without a pinned revision.

`import_model` (r1vflow.stages.import_model.resolve_checkpoint) reads a checkpoint name as a
local directory when one exists, else as a hub id, which it downloads only at the commit
`model.pretrained.revisions` pins for it. `validate` and `run` call `unpinned_checkpoints` so that
such an experiment is refused in one line naming the field, before any task starts (locally, the
import task would otherwise fail after the stages before it, and a cluster run the same).
"""

from __future__ import annotations

import re
from pathlib import Path

from r1vflow.config.experiment import Experiment

FIELDS = ("source", "vision_model", "llm_model", "substitute_llm_model")


def _hub_id(name: str) -> bool:
    """`org/name`, as the hub spells a repository (a path has more parts, or starts with . / ~)."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) is not None


def unpinned_checkpoints(exp: Experiment) -> str | None:
    """One error line naming the field: a checkpoint of `import_model` that is no local
    directory and no hub id (a missing directory), or every hub id without a pinned revision
    (`model.pretrained.revisions`); None when all it imports is local or pinned."""
    cfg = exp.import_model
    if cfg is None:
        return None
    hub = {}
    for field in FIELDS:
        value = getattr(cfg, field)
        if value is None or Path(value).is_dir() or cfg.revisions.get(value):
            continue
        if not _hub_id(value):
            return (f"model.pretrained.{field}: {value}: no such directory (a hub id is "
                    "org/name; a tiny local checkpoint: .venv/bin/python scripts/make_tiny_checkpoint.py "
                    "FAMILY DIR)")
        hub.setdefault(value, f"model.pretrained.{field}")
    if not hub:
        return None
    listed = ", ".join(f"{name} ({field})" for name, field in hub.items())
    pins = ", ".join(f"{name}: <commit>" for name in hub)
    return (f"model.pretrained.revisions: no pinned commit for the hub id{'s' * (len(hub) > 1)} "
            f"{listed}; import_model downloads a hub checkpoint only at a pinned commit: set "
            f"model.pretrained.revisions to {{{pins}}} (40-hex commits), or give a local "
            "directory")
