"""Contracts between the config and the library: backends vs ranks and ZeRO, library
objects are built from their config section, and shared Kubernetes / output / metadata helpers
exist once."""

import inspect
from pathlib import Path

import pytest

from r1vflow.config import (
    ConfigError,
    GRPOConfig,
    MonitorConfig,
    ResourceSpec,
    SSBConfig,
    experiment_from_dict,
)
from r1vflow.rl.grpo import train_grpo
from r1vflow.rl.monitor import RewardMonitor
from r1vflow.rl.ssb import SelectiveSampleBuffer
from r1vflow.runtime.podspec import accelerator_resource, container_resources, pod_labels
from r1vflow.stages.common import locate_output

# --------------------------------------------------------------------------- backend vs ranks

TRAINING = {"align_projector": {}, "sft": {}, "train_reward_model": {}, "grpo": {}}


@pytest.mark.parametrize("stage", sorted(TRAINING))
@pytest.mark.parametrize("layout", [{"procs_per_node": 2}, {"nodes": 2}])
def test_torch_backend_with_several_ranks_is_accepted(stage, layout):
    """Several ranks with backend torch run DistributedDataParallel (r1vflow.train.engine)."""
    exp = experiment_from_dict({"name": "x", **TRAINING, "resources": {stage: layout}})
    assert getattr(exp, stage).backend == "torch" and getattr(exp, stage).zero_stage == 0
    spec = exp.resources[stage]
    assert spec.nodes * spec.procs_per_node == 2


@pytest.mark.parametrize("stage", sorted(TRAINING))
def test_zero_stage_with_the_torch_backend_is_refused(stage):
    with pytest.raises(ConfigError) as err:
        experiment_from_dict({"name": "x", **TRAINING}, [f"{stage}.zero_stage=2"])
    assert "zero_stage 2 is a DeepSpeed setting" in str(err.value)
    assert "backend: deepspeed" in str(err.value)


def test_the_reward_models_likelihood_term_is_refused_under_zero3():
    base = ["train_reward_model.backend=deepspeed", "train_reward_model.likelihood_term=true"]
    with pytest.raises(ConfigError, match="0-dim parameter, which DeepSpeed ZeRO-3 cannot"):
        experiment_from_dict({"name": "x", **TRAINING}, [*base, "train_reward_model.zero_stage=3"])
    exp = experiment_from_dict({"name": "x", **TRAINING}, [*base, "train_reward_model.zero_stage=2"])
    assert exp.train_reward_model.likelihood_term


@pytest.mark.parametrize("stage", sorted(TRAINING))
@pytest.mark.parametrize("zero_stage", [0, 2])
def test_deepspeed_or_one_process_is_accepted(stage, zero_stage):
    several = {"resources": {stage: {"procs_per_node": 2}}}
    exp = experiment_from_dict({"name": "x", **TRAINING, **several},
                               [f"{stage}.backend=deepspeed", f"{stage}.zero_stage={zero_stage}"])
    assert getattr(exp, stage).backend == "deepspeed"
    one = experiment_from_dict({"name": "x", **TRAINING, "resources": {stage: {"cpu": "1"}}})
    assert getattr(one, stage).backend == "torch"


def test_stages_without_a_backend_may_run_several_processes():
    exp = experiment_from_dict({"name": "x", "resources": {"synthesize_data": {"nodes": 2}}})
    assert exp.resources["synthesize_data"].nodes == 2


# --------------------------------------------------------------------------- builders


def test_ssb_from_config_takes_every_setting():
    cfg = SSBConfig(capacity=7, max_age_steps=3, target_effective_ratio=0.6,
                    max_replay_fraction=0.25)
    ssb = SelectiveSampleBuffer.from_config(cfg, seed=5)
    assert (ssb.capacity, ssb.max_age_steps, ssb.target_effective_ratio,
            ssb.max_replay_fraction) == (7, 3, 0.6, 0.25)
    same = SelectiveSampleBuffer(7, 3, 0.6, 0.25, seed=5)
    assert ssb._rng.random() == same._rng.random()


def test_monitor_from_config_takes_every_setting():
    cfg = MonitorConfig(window=4, stop_on_flag=True, patience=2,
                        thresholds={"rm_rise": 0.1, "format_drop": 0.2, "accuracy_min_rise": 0.05})
    mon = RewardMonitor.from_config(cfg)
    assert (mon.window, mon.rm_rise, mon.format_drop, mon.accuracy_min_rise, mon.stop_on_flag,
            mon.patience) == (4, 0.1, 0.2, 0.05, True, 2)


def test_train_grpo_takes_its_settings_from_the_config_section_only():
    """No GRPO setting travels as a keyword of its own (a copy that can drift from the
    config's default): train_grpo takes the `grpo` section whole."""
    params = inspect.signature(train_grpo).parameters
    assert params["cfg"].annotation in ("GRPOConfig", GRPOConfig)
    assert not set(params) & set(GRPOConfig.model_fields)


def test_rl_cores_do_not_import_the_config_at_run_time():
    import r1vflow.rl.monitor as monitor
    import r1vflow.rl.ssb as ssb

    for module in (monitor, ssb):
        source = Path(module.__file__).read_text()
        assert "import pydantic" not in source and "from pydantic" not in source
        assert "from r1vflow.config import" not in source.split("if TYPE_CHECKING:")[0]


# --------------------------------------------------------------------------- one helper each


def test_pod_resources_read_accelerator_type_once():
    gke = ResourceSpec(accelerator_type="nvidia-h100-80gb", accelerator_count=8)
    plain = ResourceSpec(accelerator_type="nvidia.com/gpu", accelerator_count=8)
    amd = ResourceSpec(accelerator_type="amd.com/gpu", accelerator_count=2)
    assert accelerator_resource(gke) == accelerator_resource(plain) == "nvidia.com/gpu"
    assert accelerator_resource(amd) == "amd.com/gpu"
    assert accelerator_resource(ResourceSpec()) is None
    assert container_resources(ResourceSpec(memory_limit="8Gi")) == ({"memory": "8Gi"},
                                                                     {"memory": "8Gi"})


def test_trainjob_and_kfp_task_share_labels_and_resources(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import pipelines.k8s as k8s
    import r1vflow.runtime.trainjob as trainjob

    assert k8s.pod_labels is pod_labels and trainjob.pod_labels is pod_labels
    assert trainjob.container_resources is container_resources
    labels = pod_labels("exp", "train_reward_model", "ab" * 32)
    assert labels == {"r1vflow.io/experiment": "exp", "r1vflow.io/stage": "train-reward-model",
                      "r1vflow.io/fingerprint": "ab" * 8}


def test_trainjob_labels_are_the_pod_labels(tmp_path):
    from r1vflow.runtime.trainjob import trainjob_for_stage

    exp = experiment_from_dict({"name": "x", "sft": {"backend": "deepspeed"},
                                "resources": {"sft": {"nodes": 2}}})
    job = trainjob_for_stage("{}", exp, "sft", exp.resources["sft"], "t" * 8, environ={})
    assert job["metadata"]["labels"] == pod_labels("x", "sft", exp.fingerprint())


def test_one_output_locator(tmp_path):
    from r1vflow.runtime.launch import _locate

    outputs = {"model": tmp_path / "m", "checkpoints": tmp_path / "c"}
    assert locate_output(tmp_path / "m", outputs) == ("model", ".")
    assert locate_output(tmp_path / "c" / "step-1", outputs) == ("checkpoints", "step-1")
    assert locate_output(tmp_path / "else", outputs) is None
    assert _locate(tmp_path / "c" / "step-1", outputs) == ("checkpoints", "step-1")


def test_model_metadata_io_lives_in_models_io():
    import r1vflow.models.io as io
    import r1vflow.stages.common as common

    for name in ("read_metadata", "write_metadata", "parent_version"):
        assert getattr(common, name) is getattr(io, name)


def test_grpo_reward_model_weight_needs_the_reward_model_stage():
    from r1vflow.config import ConfigError, load_experiment

    from conftest import PRESETS

    with pytest.raises(ConfigError, match="enable train_reward_model"):
        load_experiment(PRESETS / "smoke.yaml",
                        ["train_reward_model=null", "sft.iterative=null",
                         "grpo.reward_weights.reward_model=0.5"])
    assert load_experiment(PRESETS / "smoke.yaml", ["grpo.reward_weights.reward_model=0.5"])
