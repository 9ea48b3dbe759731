"""Stage functions, one module per stage. Imported lazily so a component loads only its own."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from r1vflow.stages.common import StageContext, StageOutcome, StageResult

# stage name -> module; every module has `run(ctx: StageContext) -> StageOutcome`.
_MODULES = {
    "bootstrap": "r1vflow.stages.bootstrap",
    "synthesize_data": "r1vflow.stages.synthesize_data",
    "align_projector": "r1vflow.stages.align_projector",
    "sft": "r1vflow.stages.sft",
    "train_reward_model": "r1vflow.stages.train_reward_model",
    "grpo": "r1vflow.stages.grpo",
    "evaluate": "r1vflow.stages.evaluate",
}


def stage_function(stage: str) -> Callable[[StageContext], StageOutcome]:
    if stage not in _MODULES:
        raise KeyError(f"unknown stage {stage!r}; known: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[stage]).run


__all__ = ["StageContext", "StageOutcome", "StageResult", "stage_function"]
