"""The stage table is the one contract: components, evaluate, the DAG and the slices follow it."""

import inspect
import json

import pytest

from r1vflow.config import STAGES, StageName, load_experiment
from r1vflow.config.slicing import (
    PROMOTION,
    apply_overrides,
    experiment_from_slice,
    slice_for,
    slice_json,
    split_overrides,
)
from r1vflow.config.stage_table import TABLE, evaluated_models, stage

from conftest import PRESETS


def _component(name):
    from r1vflow.pipelines.dag import COMPONENTS

    return COMPONENTS[name]


def test_order_is_the_dependency_order():
    position = {name: i for i, name in enumerate(STAGES)}
    for spec in TABLE:
        for inp in spec.inputs:
            assert position[inp.producer] < position[spec.name], (spec.name, inp)
    # sft needs the reward model: it comes after it (the old order had it before)
    assert position["train_reward_model"] < position["sft"]
    assert list(StageName.__args__) == list(STAGES)


def test_every_input_names_a_real_output_of_its_producer():
    for spec in TABLE:
        for inp in spec.inputs:
            outputs = {o.name: o.type for o in stage(inp.producer).outputs}
            assert outputs.get(inp.output) == inp.type, (spec.name, inp)


@pytest.mark.parametrize("spec", TABLE, ids=lambda s: s.name)
def test_component_signature_matches_the_table(spec):
    params = inspect.signature(_component(spec.name).python_func).parameters
    declared = {n for n in params if n not in ("experiment_json", "metrics", "report", "html_report")}
    assert declared == {i.name for i in spec.inputs} | {o.name for o in spec.outputs}
    for inp in spec.inputs:
        assert (params[inp.name].default is None) == inp.optional, inp.name
    from r1vflow.runtime.images import image_for

    image = _component(spec.name).component_spec.implementation.container.image
    assert image == image_for(spec.image)


def test_configure_outputs_one_slice_per_stage_and_promotion():
    from r1vflow.components.configure import configure

    assert list(configure.component_spec.outputs) == [*STAGES, PROMOTION]


def test_evaluate_scores_base_then_each_training_stage():
    assert evaluated_models() == {"base_model": "base", "align_projector_model": "align_projector",
                                  "sft_model": "sft", "mpo_model": "mpo", "grpo_model": "grpo"}


def test_unknown_stage_names_the_known_ones():
    with pytest.raises(KeyError, match="known: bootstrap, import_model, synthesize_data"):
        stage("dpo")


# --------------------------------------------------------------------------- slices

@pytest.fixture(scope="module")
def smoke():
    return load_experiment(PRESETS / "smoke.yaml")


def _changed(a, b):
    return [s for s in a.stages() if slice_json(a, s) != slice_json(b, s)]


def test_a_slice_holds_only_what_its_stage_reads(smoke):
    grpo = slice_for(smoke, "grpo")
    assert grpo["grpo"]["lr"] == smoke.grpo.lr
    assert grpo["data"] == smoke.data.model_dump(mode="json")
    for absent in ("bootstrap", "align_projector", "train_reward_model", "sft", "mpo"):
        assert grpo[absent] is None
    for absent in ("evaluate", "model", "resources", "cluster"):
        assert absent not in grpo
    assert set(grpo["tracking"]) == {"tracking_uri", "experiment_name", "register_models"}
    assert slice_for(smoke, "sft")["train_reward_model"] == {
        "max_length": smoke.train_reward_model.max_length}
    assert slice_for(smoke, PROMOTION)["tracking"] == smoke.tracking.model_dump(mode="json")


def test_a_slice_validates_back_to_the_same_sections(smoke):
    for name in smoke.stages():
        sliced = experiment_from_slice(slice_json(smoke, name))
        assert getattr(sliced, name) == getattr(smoke, name)
        assert sliced.data == smoke.data and sliced.name == smoke.name


@pytest.mark.parametrize(("override", "changed"), [
    ("evaluate.limit=8", ["evaluate"]),
    ("grpo.lr=3e-4", ["grpo"]),
    ("sft.lr=3e-3", ["sft"]),
    # every stage of smoke reads the data section (import_model reads only model; smoke runs
    # neither mpo nor distill)
    ("data.seed=5", [s for s in STAGES if s not in ("import_model", "mpo", "distill")]),
    ("tracking.promotion_min_delta=0.1", []),  # read only by the uncached promotion tasks
    ("resources.sft.retries=3", []),  # compiled into the task's retry policy, not read by it
    # a stage's process layout is in its slice (sft would need backend deepspeed for 2 ranks)
    ("resources.synthesize_data.procs_per_node=2", ["synthesize_data"]),
])
def test_an_override_changes_only_the_slices_that_read_it(smoke, override, changed):
    from r1vflow.config import experiment_from_dict

    other = experiment_from_dict(smoke.model_dump(mode="json"), [override])
    assert _changed(smoke, other) == list(changed)


def test_runtime_overrides_are_validated_with_the_field_path(smoke):
    assert apply_overrides(smoke, ["grpo.lr=3e-4"]).grpo.lr == 3e-4
    with pytest.raises(ValueError, match=r"grpo\.lr: Input should be greater than 0"):
        apply_overrides(smoke, ["grpo.lr=-1"])
    with pytest.raises(ValueError, match="resources is compiled into the pipeline"):
        apply_overrides(smoke, ["resources.sft.retries=2"])
    with pytest.raises(ValueError, match="change the enabled stages"):
        apply_overrides(smoke, ["grpo=null"])


def test_split_overrides_keeps_compile_time_keys_for_the_compiler():
    compiled, runtime = split_overrides(["resources.sft.cpu=4", "grpo=null", "grpo.lr=1e-4",
                                         "name=other", "evaluate.limit=3"])
    assert compiled == ["resources.sft.cpu=4", "grpo=null", "name=other"]
    assert runtime == ["grpo.lr=1e-4", "evaluate.limit=3"]


def test_configure_task_body_hands_out_slices_and_refuses_bad_values(smoke, capsys):
    from r1vflow.runtime.configure import configure_slices

    slices = configure_slices(smoke.model_dump_json(), ["grpo.lr=3e-4"])
    assert len(slices) == len(STAGES) + 1
    assert json.loads(slices[STAGES.index("grpo")])["grpo"]["lr"] == 3e-4
    assert slices[STAGES.index("evaluate")] == slice_json(smoke, "evaluate")
    with pytest.raises(SystemExit) as exit_info:
        configure_slices(smoke.model_dump_json(), ["sft.batch_size=zero"])
    assert exit_info.value.code == 2
    assert "sft.batch_size" in capsys.readouterr().err
