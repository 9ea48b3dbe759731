"""The DAG: experiment -> KFP pipeline, wired from the stage table (r1vflow.config.stage_table).

    configure -> bootstrap -> synthesize_data -> {[align_projector], [train_reward_model]}
              -> [distill] -> [sft]
              -> [mpo] -> [grpo] -> evaluate -> decide_promotion -> [promote]
    (R1V2: base -> mpo -> grpo with sft null; mpo and grpo start from the latest model before
     them)
    (sft starts from the aligned model and filters its data with the reward model; evaluate
     scores the base model and every trained model)

The pipeline has two parameters: `experiment_json` (the whole experiment, its compiled default)
and `overrides` (a list of `a.b=c`, the `--set` syntax, default empty: what a person edits when
starting a run in the KFP UI). The first task, `configure`, applies and validates the overrides
and gives every task only its config slice (r1vflow.config.slicing), so a task's cache key is its
code, its input artifacts and what it reads. Per-stage cluster settings (resources, node
selectors, tolerations) compile into the IR and are ignored by the local runner.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature at runtime.

from typing import NamedTuple

from kfp import dsl

from r1vflow.components.align_projector import align_projector
from r1vflow.components.bootstrap import bootstrap
from r1vflow.components.configure import configure
from r1vflow.components.distill import distill
from r1vflow.components.evaluate import evaluate
from r1vflow.components.grpo import grpo
from r1vflow.components.import_model import import_model
from r1vflow.components.mpo import mpo
from r1vflow.components.promote import decide_promotion, promote
from r1vflow.components.sft import sft
from r1vflow.components.synthesize_data import synthesize_data
from r1vflow.components.train_reward_model import train_reward_model
from r1vflow.config import Experiment
from r1vflow.config.slicing import PROMOTION
from r1vflow.config.stage_table import BASE_PRODUCERS
from r1vflow.config.stage_table import stage as stage_spec
from r1vflow.pipelines.k8s import (
    apply_environment,
    apply_image,
    apply_task_settings,
    kfp_caller_names,
)

COMPONENTS = {"bootstrap": bootstrap, "import_model": import_model,
              "synthesize_data": synthesize_data,
              "align_projector": align_projector, "train_reward_model": train_reward_model,
              "sft": sft, "grpo": grpo, "evaluate": evaluate, "mpo": mpo,
              "distill": distill}
BASE_MODEL = ("bootstrap", "base_model")  # bootstrap's output, else the imported base model


def pipeline_name(exp: Experiment) -> str:
    return f"r1vflow-{exp.name}"


def _inputs(stage: str, tasks: dict, base_model) -> dict:
    """The stage's input artifacts, from the producers the stage table names."""
    kwargs = {}
    for inp in stage_spec(stage).inputs:
        producer = inp.producer
        if producer in BASE_PRODUCERS:  # bootstrap's outputs, or import_model's
            producer = next((p for p in BASE_PRODUCERS if p in tasks), producer)
        if (inp.producer, inp.output) == BASE_MODEL:
            kwargs[inp.name] = base_model
        elif producer in tasks:
            kwargs[inp.name] = tasks[producer].outputs[inp.output]
        elif not inp.optional:
            raise ValueError(f"stage {stage} needs {inp.name} from {inp.producer}, which this "
                             "experiment does not run")
    return kwargs


def build_pipeline(exp: Experiment, local: bool = False):
    """Return the KFP pipeline function for this experiment's enabled stages.

    `local` (the local driver, r1vflow.pipelines.local_run): `configure` is cached like a stage.
    On a cluster it never is, because there it finds or creates the KFP run's MLflow parent run;
    under the local driver it touches no MLflow (the driver made the parent run), so its slices
    depend on its inputs alone and a cached rerun skips its process."""
    with kfp_caller_names():  # the body below runs here, in dsl.pipeline
        return _pipeline(exp, local)


def _pipeline(exp: Experiment, local: bool):
    stages = exp.stages()
    Outputs = NamedTuple("Outputs", [(s, str) for s in stages])  # noqa: UP014 (dynamic fields)

    @dsl.pipeline(name=pipeline_name(exp), description=exp.description or f"r1vflow {exp.name}")
    def pipeline(experiment_json: str, overrides: list = []) -> Outputs:  # noqa: B006 (KFP default)
        config = configure(experiment_json=experiment_json, overrides=overrides)
        config.set_display_name("configure").set_caching_options(local)
        apply_environment(config, exp.cluster)  # MLflow settings: it tags the parent run
        apply_image(config, exp.cluster)
        slices = config.outputs
        tasks: dict[str, dsl.PipelineTask] = {}
        base_model = None
        if exp.bootstrap is None and exp.import_model is None:  # already imported
            base_model = dsl.importer(
                artifact_uri=exp.model.pretrained.base_model_uri, artifact_class=dsl.Model,
                reimport=False).output
        for stage in stages:
            task = COMPONENTS[stage](experiment_json=slices[stage],
                                     **_inputs(stage, tasks, base_model))
            if stage in BASE_PRODUCERS:
                base_model = task.outputs["base_model"]
            if stage == "synthesize_data" and "bootstrap" in tasks:
                task.after(tasks["bootstrap"])  # reuses nothing of bootstrap, but runs after it
            tasks[stage] = task
        for stage, task in tasks.items():
            task.set_display_name(stage)
            apply_task_settings(task, stage, exp)
        if exp.tracking.register_models:  # the champion gate (r1vflow.tracking.promotion)
            evaluation = tasks["evaluate"].outputs["Output"]
            gate = decide_promotion(experiment_json=slices[PROMOTION], evaluation=evaluation)
            gate.set_display_name("decide_promotion").set_caching_options(False)
            with dsl.If(gate.output == True, name="beats-champion"):  # noqa: E712 (KFP condition)
                promoted = promote(experiment_json=slices[PROMOTION], evaluation=evaluation)
                promoted.set_display_name("promote").set_caching_options(False)
        return Outputs(**{s: tasks[s].outputs["Output"] for s in stages})

    return pipeline
