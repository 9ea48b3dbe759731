"""evaluate: test-split accuracy, format compliance and response length of the base model and of
the final model of every training stage, and the configured published benchmarks (their
predictions in `predictions`); KFP Metrics plus a Markdown report for the UI."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from r1vflow.runtime.images import image_for


@dsl.component(base_image=image_for("rollout"), install_kfp_package=False)
def evaluate(experiment_json: str, base_model: Input[Model], dataset: Input[Dataset],
             metrics: Output[Metrics], report: Output[Markdown], predictions: Output[Artifact],
             html_report: Output[HTML],
             sft_model: Input[Model] = None, grpo_model: Input[Model] = None,
             align_projector_model: Input[Model] = None, mpo_model: Input[Model] = None) -> str:
    from r1vflow.runtime.execute import execute

    models = {"sft_model": sft_model, "grpo_model": grpo_model,
              "align_projector_model": align_projector_model, "mpo_model": mpo_model}
    return execute("evaluate", experiment_json,
                   inputs={"base_model": base_model.path, "dataset": dataset.path,
                           **{k: m.path for k, m in models.items() if m is not None}},
                   outputs={"predictions": predictions.path}, metrics=metrics, report=report,
                   html_report=html_report)
