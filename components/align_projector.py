"""align_projector: R1V stage 1. Train the MLP projector against the frozen substitute LLM, move
it onto the reasoning LLM, align it there; outputs the aligned model."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from r1vflow.runtime.images import image_for


@dsl.component(base_image=image_for("trainer"), install_kfp_package=False)
def align_projector(experiment_json: str, base_model: Input[Model], substitute_llm: Input[Model],
                    dataset: Input[Dataset], model: Output[Model], metrics: Output[Metrics],
                    report: Output[Markdown],
                    html_report: Output[HTML]) -> str:
    from r1vflow.runtime.execute import execute

    return execute("align_projector", experiment_json,
                   inputs={"base_model": base_model.path, "substitute_llm": substitute_llm.path,
                           "dataset": dataset.path},
                   outputs={"model": model.path}, metrics=metrics, report=report, html_report=html_report)
