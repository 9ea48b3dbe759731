"""Where a stage's resumable checkpoints live (r1vflow.train.checkpoint), one job: the place.

The place is derived from the stage, its config section (checkpoint settings aside), the data
and model sections and its inputs' digests, so the same stage run again on the same inputs (a
KFP retry, a new pod, the same command) finds them; with an object store they are uploaded under
<storage.prefix>/<experiment>/checkpoints/<stage>/<key>.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from r1vflow.config import Experiment
from r1vflow.train.checkpoint import Checkpointer, CheckpointPolicy, checkpoint_key, local_root


def stage_checkpointer(exp: Experiment, stage: str, inputs: Mapping[str, Path],
                       store: Any = None) -> Checkpointer:
    """The Checkpointer of `stage` run on `inputs` (a stage without a config section: the
    default checkpoint policy)."""
    section = getattr(exp, stage, None)
    dumped = section.model_dump(mode="json") if section is not None else {}
    key = checkpoint_key(stage, dumped, inputs,
                         {"data": exp.data.model_dump(mode="json"),
                          "model": exp.model.model_dump(mode="json")})
    prefix = f"{exp.storage.prefix}/{exp.name}/checkpoints/{stage}/{key}"
    return Checkpointer(stage, local_root(exp.name, stage, key),
                        CheckpointPolicy.from_section(section), store=store, prefix=prefix)
