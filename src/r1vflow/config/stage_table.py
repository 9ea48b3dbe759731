"""The stage table: the one place that names every stage, the module that runs it, the artifacts
it takes and makes (name, type, producing stage), the model it yields, its label in metrics, and
the experiment sections it reads (its cache key: a task receives only those, see `slice_for`).

`STAGES` (the true dependency order), `StageName`, the stage-module map, evaluate's model inputs,
the DAG's wiring and the per-task config slices are all read from here. The component functions
(components/*.py) must declare exactly these inputs and outputs; tests/test_stage_table.py checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ArtifactType = Literal["Model", "Dataset", "Artifact"]


@dataclass(frozen=True)
class Input:
    """An input artifact: its name in the component, its type, and which stage's output feeds it
    (`producer`, `output`); `optional` inputs are wired only when the producer is enabled."""

    name: str
    type: ArtifactType
    producer: str
    output: str
    optional: bool = False


@dataclass(frozen=True)
class Output:
    name: str
    type: ArtifactType


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    model_output: str | None = None  # the output that holds the model the stage yields
    label: str | None = None  # `<metric>/<label>` in evaluate; evaluate's input `<label>_model`
    reads: tuple[str, ...] = ()  # experiment sections besides its own (a.b: one field of a)
    optional: bool = True  # False: always part of the DAG
    image: Literal["base", "trainer", "rollout"] = "trainer"  # the component's image role


# The base model: bootstrap's output on tiny presets, import_model's for released checkpoints
# (both make base_model and substitute_llm; inputs name bootstrap, and the DAG takes whichever
# of BASE_PRODUCERS runs), or an artifact imported from model.pretrained.base_model_uri.
BASE = "base"
BASE_PRODUCERS = ("bootstrap", "import_model")

_BASE_MODEL = Input("base_model", "Model", "bootstrap", "base_model")
_DATASET = Input("dataset", "Dataset", "synthesize_data", "dataset")

TABLE: tuple[Stage, ...] = (
    Stage("bootstrap", "r1vflow.stages.bootstrap", inputs=(),
          outputs=(Output("base_model", "Model"), Output("substitute_llm", "Model")),
          model_output="base_model", label=BASE,
          reads=("model", "data.image_size", "data.seed")),  # not data.source: a new data
          # file must not retrain the base models, which never read it
    Stage("import_model", "r1vflow.stages.import_model", inputs=(),
          outputs=(Output("base_model", "Model"), Output("substitute_llm", "Model")),
          model_output="base_model", reads=("model",)),
    Stage("synthesize_data", "r1vflow.stages.synthesize_data", inputs=(),
          outputs=(Output("dataset", "Dataset"),), reads=("data",), optional=False,
          image="base"),
    Stage("align_projector", "r1vflow.stages.align_projector",
          inputs=(_BASE_MODEL, Input("substitute_llm", "Model", "bootstrap", "substitute_llm"),
                  _DATASET),
          outputs=(Output("model", "Model"),), model_output="model", label="align_projector",
          reads=("data",)),
    Stage("train_reward_model", "r1vflow.stages.train_reward_model",
          inputs=(_BASE_MODEL, _DATASET), outputs=(Output("model", "Model"),),
          model_output="model", reads=("data",)),
    Stage("distill", "r1vflow.stages.distill",
          inputs=(_DATASET, Input("base_model", "Model", "bootstrap", "base_model"),
                  Input("aligned_model", "Model", "align_projector", "model", optional=True),
                  Input("reward_model", "Model", "train_reward_model", "model", optional=True)),
          outputs=(Output("distilled", "Dataset"),), reads=("data", "generation"),
          image="rollout"),
    Stage("sft", "r1vflow.stages.sft",
          inputs=(_DATASET,
                  Input("distilled_dataset", "Dataset", "distill", "distilled", optional=True),
                  Input("base_model", "Model", "bootstrap", "base_model", optional=True),
                  Input("aligned_model", "Model", "align_projector", "model", optional=True),
                  Input("reward_model", "Model", "train_reward_model", "model", optional=True)),
          outputs=(Output("model", "Model"), Output("iterations", "Artifact")),
          model_output="model", label="sft",
          reads=("data", "train_reward_model.max_length", "distill")),
    Stage("mpo", "r1vflow.stages.mpo",
          inputs=(_DATASET, Input("base_model", "Model", "bootstrap", "base_model"),
                  Input("aligned_model", "Model", "align_projector", "model", optional=True),
                  Input("sft_model", "Model", "sft", "model", optional=True),
                  Input("reward_model", "Model", "train_reward_model", "model", optional=True)),
          outputs=(Output("model", "Model"), Output("checkpoints", "Artifact"),
                   Output("pairs", "Dataset")),
          model_output="model", label="mpo", reads=("data", "generation"), image="rollout"),
    Stage("grpo", "r1vflow.stages.grpo",
          inputs=(Input("sft_model", "Model", "sft", "model", optional=True), _DATASET,
                  Input("reward_model", "Model", "train_reward_model", "model", optional=True),
                  Input("mpo_model", "Model", "mpo", "model", optional=True),
                  Input("base_model", "Model", "bootstrap", "base_model", optional=True)),
          outputs=(Output("model", "Model"), Output("checkpoints", "Artifact")),
          model_output="model", label="grpo", reads=("data", "generation"), image="rollout"),
    Stage("evaluate", "r1vflow.stages.evaluate",
          inputs=(_BASE_MODEL, _DATASET,
                  Input("align_projector_model", "Model", "align_projector", "model", True),
                  Input("sft_model", "Model", "sft", "model", True),
                  Input("mpo_model", "Model", "mpo", "model", True),
                  Input("grpo_model", "Model", "grpo", "model", True)),
          outputs=(Output("predictions", "Artifact"),), optional=False,
          reads=("data", "tracking.promotion_metric", "generation"),
          image="rollout"),
)

STAGE_BY_NAME: dict[str, Stage] = {s.name: s for s in TABLE}
STAGES: tuple[str, ...] = tuple(s.name for s in TABLE)
# the stages that generate (each reads the `generation:` section): vLLM or transformers
GENERATING_STAGES: tuple[str, ...] = tuple(s.name for s in TABLE if "generation" in s.reads)
StageName = Literal["bootstrap", "import_model", "synthesize_data", "align_projector",
                    "train_reward_model", "distill", "sft", "mpo", "grpo", "evaluate"]


def stage(name: str) -> Stage:
    try:
        return STAGE_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(STAGES)}") from None


def evaluated_models() -> dict[str, str]:
    """evaluate's model inputs -> their label in metric names, in the order they are scored."""
    labelled = {s.name: s.label for s in TABLE if s.label}
    return {i.name: labelled[i.producer] for i in stage("evaluate").inputs
            if i.type == "Model" and i.producer in labelled}
