"""bootstrap: build the tiny tokenizer, vision encoder and LLM, pretrain them briefly, assemble the
base VLM, and the substitute LLM of R1V's projector alignment. Tiny presets only; on a cluster
the base model is imported from the model store."""

from kfp import dsl
from kfp.dsl import HTML, Markdown, Metrics, Model, Output

from r1vflow.runtime.images import image_for


@dsl.component(base_image=image_for("trainer"), install_kfp_package=False)
def bootstrap(experiment_json: str, base_model: Output[Model], substitute_llm: Output[Model],
              metrics: Output[Metrics], report: Output[Markdown],
              html_report: Output[HTML]) -> str:
    from r1vflow.runtime.execute import execute

    return execute("bootstrap", experiment_json, inputs={},
                   outputs={"base_model": base_model.path, "substitute_llm": substitute_llm.path},
                   metrics=metrics, report=report, html_report=html_report)
