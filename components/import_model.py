"""import_model: import released checkpoints (a whole VLM, or R1V's vision + LLM composition and
its substitute LLM) as the run's base model, the root of the MLflow lineage. Runs instead of
bootstrap when model.kind is 'pretrained'."""

from kfp import dsl
from kfp.dsl import HTML, Markdown, Metrics, Model, Output

from r1vflow.runtime.images import image_for


@dsl.component(base_image=image_for("trainer"), install_kfp_package=False)
def import_model(experiment_json: str, base_model: Output[Model], substitute_llm: Output[Model],
                 metrics: Output[Metrics], report: Output[Markdown],
                 html_report: Output[HTML]) -> str:
    from r1vflow.runtime.execute import execute

    return execute("import_model", experiment_json, inputs={},
                   outputs={"base_model": base_model.path, "substitute_llm": substitute_llm.path},
                   metrics=metrics, report=report, html_report=html_report)
