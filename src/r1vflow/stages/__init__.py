"""Stage functions, one module per stage. Imported lazily so a component loads only its own."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from r1vflow.config.stage_table import stage
from r1vflow.stages.common import StageContext, StageOutcome, StageResult


def stage_function(name: str) -> Callable[[StageContext], StageOutcome]:
    """The `run(ctx) -> StageOutcome` of the module the stage table names for `name`."""
    return importlib.import_module(stage(name).module).run


__all__ = ["StageContext", "StageOutcome", "StageResult", "stage_function"]
