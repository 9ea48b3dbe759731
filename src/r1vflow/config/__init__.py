"""Experiment configuration: one pydantic model per stage, composed into one `Experiment`.

An experiment file is YAML. It is validated strictly (unknown keys are errors), can be changed from
the command line with `--set a.b=c`, and is identified by a fingerprint: the sha256 of the resolved
config without the fields that do not change what is trained (name, description, tracking, storage,
cluster, resources, schedule).

    exp = load_experiment("pipelines/configs/smoke.yaml", overrides=["sft.lr=1e-3"])
    exp.fingerprint()

Modules: `recipe` (model, data, stage sections), `platform` (resources, storage, tracking,
cluster), `experiment` (the composition), `loading` (files, overrides, errors), `stage_table`
(every stage's module, artifacts and the sections it reads), `slicing` (one task's share).
"""

from r1vflow.config.base import (
    Part,
    Strict,
)
from r1vflow.config.experiment import (
    Experiment,
)
from r1vflow.config.loading import (
    ConfigError,
    apply_override,
    experiment_from_dict,
    flatten,
    format_validation_error,
    json_schema,
    load_experiment,
)
from r1vflow.config.platform import (
    ClusterConfig,
    ImageRoleName,
    ResourceSpec,
    StorageConfig,
    Toleration,
    TrackingConfig,
)
from r1vflow.config.recipe import (
    AlignData,
    AlignProjectorConfig,
    BootstrapConfig,
    DataConfig,
    DistillConfig,
    EvaluateConfig,
    Family,
    IterativeSFTConfig,
    LoRAConfig,
    ModelConfig,
    PretrainedModelConfig,
    ProjectorAlignStep,
    ProjectorSubStage,
    RewardModelConfig,
    ScoreCalibrationConfig,
    SFTConfig,
    SynthesizeDataConfig,
    TinyModelConfig,
    TrainConfig,
)
from r1vflow.config.rl import (
    GRPOConfig,
    MonitorConfig,
    MonitorThresholds,
    MPOConfig,
    MPOPairsConfig,
    RewardWeights,
    SSBConfig,
)
from r1vflow.config.stage_table import (
    STAGE_BY_NAME,
    STAGES,
    TABLE,
    StageName,
    evaluated_models,
    stage,
)

__all__ = [
    "Part",
    "Strict",
    "TinyModelConfig",
    "PretrainedModelConfig",
    "ModelConfig",
    "Family",
    "DataConfig",
    "DistillConfig",
    "BootstrapConfig",
    "SynthesizeDataConfig",
    "TrainConfig",
    "AlignData",
    "ProjectorSubStage",
    "ProjectorAlignStep",
    "AlignProjectorConfig",
    "ScoreCalibrationConfig",
    "RewardModelConfig",
    "IterativeSFTConfig",
    "LoRAConfig",
    "SFTConfig",
    "RewardWeights",
    "SSBConfig",
    "MonitorThresholds",
    "MonitorConfig",
    "GRPOConfig",
    "MPOConfig",
    "MPOPairsConfig",
    "EvaluateConfig",
    "Toleration",
    "ResourceSpec",
    "StorageConfig",
    "TrackingConfig",
    "ImageRoleName",
    "ClusterConfig",
    "Experiment",
    "ConfigError",
    "format_validation_error",
    "apply_override",
    "experiment_from_dict",
    "load_experiment",
    "flatten",
    "json_schema",
    "TABLE",
    "STAGE_BY_NAME",
    "STAGES",
    "StageName",
    "stage",
    "evaluated_models",
]
