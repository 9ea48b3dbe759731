"""sft: supervised fine-tuning of the parts the config names, loss on assistant tokens only;
with `sft.iterative`, R1V's iterations filtered by the reward model. Starts from the aligned
model when given, else from the base model; `iterations` holds the intermediate models."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from r1vflow.runtime.images import image_for


@dsl.component(base_image=image_for("trainer"), install_kfp_package=False)
def sft(experiment_json: str, dataset: Input[Dataset], model: Output[Model],
        iterations: Output[Artifact], metrics: Output[Metrics], report: Output[Markdown],
        html_report: Output[HTML],
        base_model: Input[Model] = None, aligned_model: Input[Model] = None,
        reward_model: Input[Model] = None, distilled_dataset: Input[Dataset] = None) -> str:
    from r1vflow.runtime.execute import execute

    models = {"base_model": base_model, "aligned_model": aligned_model,
              "reward_model": reward_model, "distilled_dataset": distilled_dataset}
    return execute("sft", experiment_json,
                   inputs={"dataset": dataset.path,
                           **{k: m.path for k, m in models.items() if m is not None}},
                   outputs={"model": model.path, "iterations": iterations.path},
                   metrics=metrics, report=report, html_report=html_report)
