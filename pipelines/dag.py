"""The DAG: experiment -> KFP pipeline.

    bootstrap -> synthesize_data -> {[align_projector], [train_reward_model]} -> sft -> [grpo]
              -> evaluate
    (sft starts from the aligned model and filters its data with the reward model; evaluate
     scores the base model and every trained model)

The whole experiment travels to every task as one JSON parameter, so a task's cache key is its
stage code plus the resolved config; nothing run-specific (MLflow parent run, output dir) is a
parameter. Per-stage cluster settings (resources, node selectors, tolerations) compile into the IR
and are ignored by the local runner.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature at runtime.

from typing import NamedTuple

from kfp import dsl

from r1vflow.components.align_projector import align_projector
from r1vflow.components.bootstrap import bootstrap
from r1vflow.components.evaluate import evaluate
from r1vflow.components.grpo import grpo
from r1vflow.components.promote import decide_promotion, promote
from r1vflow.components.sft import sft
from r1vflow.components.synthesize_data import synthesize_data
from r1vflow.components.train_reward_model import train_reward_model
from r1vflow.config import Experiment
from r1vflow.pipelines.k8s import apply_task_settings


def pipeline_name(exp: Experiment) -> str:
    return f"r1vflow-{exp.name}"


def build_pipeline(exp: Experiment):
    """Return the KFP pipeline function for this experiment's enabled stages."""
    stages = exp.stages()
    Outputs = NamedTuple("Outputs", [(s, str) for s in stages])  # noqa: UP014 (dynamic fields)

    @dsl.pipeline(name=pipeline_name(exp), description=exp.description or f"r1vflow {exp.name}")
    def pipeline(experiment_json: str) -> Outputs:
        tasks: dict[str, dsl.PipelineTask] = {}
        if exp.bootstrap is not None:
            tasks["bootstrap"] = bootstrap(experiment_json=experiment_json)
            base_model = tasks["bootstrap"].outputs["base_model"]
        else:
            base_model = dsl.importer(
                artifact_uri=exp.model.pretrained.base_model_uri, artifact_class=dsl.Model,
                reimport=False).output
        tasks["synthesize_data"] = synthesize_data(experiment_json=experiment_json)
        if "bootstrap" in tasks:  # the data stage reuses nothing of bootstrap, but runs after it
            tasks["synthesize_data"].after(tasks["bootstrap"])
        dataset = tasks["synthesize_data"].outputs["dataset"]
        sft_inputs, trained = {"base_model": base_model}, {}
        if exp.align_projector is not None:  # R1V stage 1; SFT then starts from its model
            tasks["align_projector"] = align_projector(
                experiment_json=experiment_json, base_model=base_model,
                substitute_llm=tasks["bootstrap"].outputs["substitute_llm"], dataset=dataset)
            sft_inputs = {"aligned_model": tasks["align_projector"].outputs["model"]}
            trained["align_projector_model"] = tasks["align_projector"].outputs["model"]
        if exp.train_reward_model is not None:  # filters iterative SFT's data
            tasks["train_reward_model"] = train_reward_model(
                experiment_json=experiment_json, base_model=base_model, dataset=dataset)
            sft_inputs["reward_model"] = tasks["train_reward_model"].outputs["model"]
        tasks["sft"] = sft(experiment_json=experiment_json, dataset=dataset, **sft_inputs)
        trained["sft_model"] = tasks["sft"].outputs["model"]
        if exp.grpo is not None:
            rm = ({"reward_model": tasks["train_reward_model"].outputs["model"]}
                  if "train_reward_model" in tasks else {})
            tasks["grpo"] = grpo(experiment_json=experiment_json,
                                 sft_model=tasks["sft"].outputs["model"], dataset=dataset, **rm)
            trained["grpo_model"] = tasks["grpo"].outputs["model"]
        tasks["evaluate"] = evaluate(experiment_json=experiment_json, base_model=base_model,
                                     dataset=dataset, **trained)
        for stage, task in tasks.items():
            task.set_display_name(stage)
            apply_task_settings(task, stage, exp)
        if exp.tracking.register_models:  # the champion gate (r1vflow.tracking.promotion)
            evaluation = tasks["evaluate"].outputs["Output"]
            gate = decide_promotion(experiment_json=experiment_json, evaluation=evaluation)
            gate.set_display_name("decide_promotion").set_caching_options(False)
            with dsl.If(gate.output == True, name="beats-champion"):  # noqa: E712 (KFP condition)
                promoted = promote(experiment_json=experiment_json, evaluation=evaluation)
                promoted.set_display_name("promote").set_caching_options(False)
        return Outputs(**{s: tasks[s].outputs["Output"] for s in stages})

    return pipeline
