"""sft: supervised fine-tuning of the parts the config names, loss on assistant tokens only."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from r1vflow.images import image_for


@dsl.component(base_image=image_for("trainer"), install_kfp_package=False)
def sft(experiment_json: str, base_model: Input[Model], dataset: Input[Dataset],
        model: Output[Model], metrics: Output[Metrics], report: Output[Markdown]) -> str:
    from r1vflow.components.runtime import execute

    return execute("sft", experiment_json,
                   inputs={"base_model": base_model.path, "dataset": dataset.path},
                   outputs={"model": model.path}, metrics=metrics, report=report)
