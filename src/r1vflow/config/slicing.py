"""One task's share of the experiment, so that a task's KFP cache key is what it reads.

Every task of the DAG receives `slice_json(exp, stage)`: the experiment reduced to the stage's own
section, the sections the stage table says it reads (`Stage.reads`, e.g. `data` or one field such
as `tracking.promotion_metric`), what the task runtime needs (where to track and store, the
stage's process layout, and its node resources and the cluster section when it launches a
TrainJob), and the name.
Optional stage sections it does not read are null (reading one by mistake fails loudly);
required ones hold their defaults. Changing `evaluate.limit` therefore changes only evaluate's
parameter, and `grpo.lr` only grpo's (evaluate re-runs because its input model changed).

Runtime overrides (the compiled pipeline's `overrides` parameter, `a.b=c` like `--set`) are
applied to the whole experiment and validated before anything is sliced (`apply_overrides`).
"""

from __future__ import annotations

import json
from typing import Any

from r1vflow.config.experiment import SLICE_CONTEXT, Experiment
from r1vflow.config.loading import ConfigError, experiment_from_dict, format_validation_error
from r1vflow.config.platform import ResourceSpec
from r1vflow.config.stage_table import STAGES, stage

# What the task runtime (r1vflow.runtime.execute) reads for every stage.
RUNTIME_READS = ("tracking.tracking_uri", "tracking.experiment_name",
                 "tracking.register_models", "storage")
# The promotion tasks read only tracking.
PROMOTION = "promotion"
PROMOTION_READS = ("tracking",)
# Top-level keys compiled into the pipeline's structure or pod specs: a runtime override of them
# could not take effect, so it is refused.
COMPILE_TIME = ("name", "description", "schedule", "resources", "cluster")
# (import_model has no section of its own: it runs on model.pretrained, see Experiment)
_OPTIONAL_STAGES = tuple(s for s in STAGES
                         if stage(s).optional and s in Experiment.model_fields)


def _pick(data: dict[str, Any], path: str, into: dict[str, Any]) -> None:
    """Copy data[a][b]... (path 'a.b') into `into` at the same place."""
    keys = path.split(".")
    node, target = data, into
    for key in keys[:-1]:
        node = node.get(key)
        if not isinstance(node, dict):
            return  # a null section: nothing to read
        if target.get(key) is None:
            target[key] = {}
        target = target[key]
    if keys[-1] in node:
        target[keys[-1]] = node[keys[-1]]


def slice_for(exp: Experiment, name: str) -> dict[str, Any]:
    """The part of `exp` that task `name` (a stage, or 'promotion') reads, as plain data."""
    data = exp.model_dump(mode="json")
    out: dict[str, Any] = {"name": exp.name}
    out.update({s: None for s in _OPTIONAL_STAGES})
    if name == PROMOTION:
        reads: tuple[str, ...] = PROMOTION_READS
    else:
        spec = stage(name)
        reads = (name, *spec.reads, *RUNTIME_READS)
        resources = exp.resources.get(name) or ResourceSpec()
        # The task reads its process layout; a TrainJob (nodes > 1) also its node resources and
        # the cluster section. Retries, caching and pod resources are compiled in.
        spec = resources.model_dump(mode="json")
        if resources.nodes > 1:
            reads = (*reads, "cluster")
        elif (resources.nodes, resources.procs_per_node) == (1, 1):
            spec = None  # the default: one process
        else:
            spec = {k: spec[k] for k in ("nodes", "procs_per_node")}
        if spec is not None:
            out["resources"] = {name: spec}
    for path in reads:
        _pick(data, path, out)
    return out


def slice_json(exp: Experiment, name: str) -> str:
    return json.dumps(slice_for(exp, name), sort_keys=True, separators=(",", ":"))


def experiment_from_slice(text: str) -> Experiment:
    """Validate a task's slice (or a whole experiment) as the task's Experiment."""
    try:
        return Experiment.model_validate_json(text, context={SLICE_CONTEXT: True})
    except ValueError as err:
        from pydantic import ValidationError

        if isinstance(err, ValidationError):
            raise ConfigError(format_validation_error(err)) from None
        raise


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(overrides that must be compiled in, overrides a run can take as its parameter).

    Compiled in: COMPILE_TIME keys and a whole optional stage section (`grpo=null`), which
    changes the DAG's shape."""
    compiled, runtime = [], []
    for assignment in overrides:
        key = assignment.split("=", 1)[0].strip()
        top = key.split(".")[0]
        (compiled if top in COMPILE_TIME or key in _OPTIONAL_STAGES else runtime).append(assignment)
    return compiled, runtime


def apply_overrides(exp: Experiment, overrides: list[str]) -> Experiment:
    """`exp` with runtime overrides applied and the whole result validated.

    Refused, with the reason: keys compiled into the pipeline (resources, cluster, name...), and
    overrides that enable or disable a stage (the DAG's shape is fixed when it is compiled)."""
    if not overrides:
        return exp
    for assignment in overrides:
        top = assignment.split("=", 1)[0].strip().split(".")[0]
        if top in COMPILE_TIME:
            raise ConfigError(f"override {assignment!r}: {top} is compiled into the pipeline; "
                              f"recompile with `r1vflow compile --set {assignment}` instead")
    new = experiment_from_dict(exp.model_dump(mode="json"), overrides)
    if new.stages() != exp.stages():
        raise ConfigError(f"overrides {overrides} change the enabled stages "
                          f"({' -> '.join(exp.stages())} to {' -> '.join(new.stages())}); the "
                          "DAG is fixed when compiled: recompile with --set instead")
    return new
