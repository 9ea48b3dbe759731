"""configure: the DAG's first task. Applies the run's `overrides` (a list of `a.b=c`, as `--set`)
to the compiled experiment, validates the result (the run fails here, naming the field path, on a
bad value) and hands every task its config slice, so each task's cache key is what it reads."""

from typing import NamedTuple

from kfp import dsl

from r1vflow.runtime.images import image_for


# The output names are the stage table's stages plus `promotion` (tests/test_stage_table.py);
# spelled out because KFP ships only this function's source to the task.
@dsl.component(base_image=image_for("base"), install_kfp_package=False)
def configure(experiment_json: str, overrides: list) -> NamedTuple(  # noqa: UP014
        "Slices", [("bootstrap", str), ("import_model", str), ("synthesize_data", str),
                   ("align_projector", str), ("train_reward_model", str), ("distill", str),
                   ("sft", str), ("mpo", str), ("grpo", str), ("evaluate", str),
                   ("promotion", str)]):
    from r1vflow.runtime.configure import configure_slices

    return configure_slices(experiment_json, overrides)
