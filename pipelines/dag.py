"""The DAG: experiment -> KFP pipeline.

    bootstrap -> synthesize_data -> sft -> [grpo] -> evaluate
                 (evaluate also scores the base model, and every trained model)

The whole experiment travels to every task as one JSON parameter, so a task's cache key is its
stage code plus the resolved config; nothing run-specific (MLflow parent run, output dir) is a
parameter. Per-stage cluster settings (resources, node selectors, tolerations) compile into the IR
and are ignored by the local runner.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature at runtime.

from typing import NamedTuple

from kfp import dsl
from r1vflow.components.bootstrap import bootstrap
from r1vflow.components.evaluate import evaluate
from r1vflow.components.grpo import grpo
from r1vflow.components.sft import sft
from r1vflow.components.synthesize_data import synthesize_data
from r1vflow.pipelines.k8s import apply_task_settings

from r1vflow.config import Experiment


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
        tasks["sft"] = sft(experiment_json=experiment_json, base_model=base_model, dataset=dataset)
        trained = {"sft_model": tasks["sft"].outputs["model"]}
        if exp.grpo is not None:
            tasks["grpo"] = grpo(experiment_json=experiment_json,
                                 sft_model=tasks["sft"].outputs["model"], dataset=dataset)
            trained["grpo_model"] = tasks["grpo"].outputs["model"]
        tasks["evaluate"] = evaluate(experiment_json=experiment_json, base_model=base_model,
                                     dataset=dataset, **trained)
        for stage, task in tasks.items():
            task.set_display_name(stage)
            apply_task_settings(task, stage, exp)
        return Outputs(**{s: tasks[s].outputs["Output"] for s in stages})

    return pipeline
