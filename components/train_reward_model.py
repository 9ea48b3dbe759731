"""train_reward_model: the base VLM with a scalar value head, trained with the pairwise loss on
the chosen/rejected pairs; outputs the reward model (head and 0..5 calibration included)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from r1vflow.runtime.images import image_for


@dsl.component(base_image=image_for("trainer"), install_kfp_package=False)
def train_reward_model(experiment_json: str, base_model: Input[Model], dataset: Input[Dataset],
                       model: Output[Model], metrics: Output[Metrics],
                       report: Output[Markdown],
                       html_report: Output[HTML]) -> str:
    from r1vflow.runtime.execute import execute

    return execute("train_reward_model", experiment_json,
                   inputs={"base_model": base_model.path, "dataset": dataset.path},
                   outputs={"model": model.path}, metrics=metrics, report=report, html_report=html_report)
